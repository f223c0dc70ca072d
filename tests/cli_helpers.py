"""Running the ``circuits`` command line in-process, and the error contract every test checks:
a bad input is one ``Error: ...`` line on stderr, exit status 2, no traceback."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from circuits_cli.cli import cli

#: The planted network of the evidence, units, features and steering tests, as a user model's
#: ``--model`` value (``FILE:FUNCTION``).
PLANTED_EVIDENCE = f"{Path(__file__).resolve().parent / 'planted_evidence_model.py'}:build"


def run(*args, env=None):
    """``circuits ARGS...``; an unexpected exception propagates with its traceback."""
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def assert_clean_error(result, *needles):
    """Exit status 2 and one ``Error:`` line (containing each of ``needles``), no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[-1], lines[-1]
