"""Launching the jobs of a long pass on a cluster, through submitit (Slurm), as array jobs.

``circuits cache``, ``circuits sae train`` and friends stay single-machine programs with
``--shard K/N``; :func:`run_array` starts ``N`` copies of a job function, one per shard, as one
Slurm array (``--launcher slurm``) or as local processes (``--launcher local``: submitit's
``LocalExecutor``, the same code path on one machine, which is how the tests run it), waits for
them, and returns their results in shard order. Submitit's logs and pickles go to ``folder``
(one sub-folder per job: ``%j``), where ``sacct`` / ``squeue`` job ids can be matched to them.

A failed job is a one-line :class:`~circuits_cli.errors.CircuitsError` naming its log; the jobs
that finished keep their work (every pass that runs here is resumable), so the same command
resubmits only what is missing.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import CircuitsError

LAUNCHERS = ("local", "slurm")


def run_array(fn: Callable, args: Sequence[tuple], *, launcher: str, folder: str | Path,
              slurm: dict | None = None, name: str = "circuits",
              log: Callable[[str], None] | None = None) -> list:
    """``[fn(*a) for a in args]``, each call one job of an array on ``launcher``."""
    try:
        import submitit
    except ImportError:  # pragma: no cover - a declared dependency
        raise CircuitsError("--launcher needs the 'submitit' package: pip install "
                            "submitit") from None
    if launcher not in LAUNCHERS:
        raise CircuitsError(f"unknown --launcher {launcher!r}; choose {' or '.join(LAUNCHERS)}")
    folder = Path(folder) / "%j"
    if launcher == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=int((slurm or {}).get("timeout_min", 24 * 60)))
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = {f"slurm_{k}" if not k.startswith(("slurm_", "timeout_min", "gpus_per_node",
                                                    "cpus_per_task", "mem_gb", "nodes"))
                  else k: v for k, v in (slurm or {}).items() if v is not None}
        executor.update_parameters(name=name, **params)
    columns = list(zip(*args, strict=True)) if args else []
    jobs = executor.map_array(fn, *columns)
    if log is not None:
        ids = ", ".join(j.job_id for j in jobs[:4]) + (", ..." if len(jobs) > 4 else "")
        log(f"submitted {len(jobs)} job(s) to {launcher} ({ids}); logs in {folder.parent}")
    results, failed = [], []
    for job in jobs:
        try:
            results.append(job.result())
        except Exception as err:  # noqa: BLE001 - any failure of a job is reported as one line
            failed.append((job, err))
            results.append(None)
    if failed:
        job, err = failed[0]
        last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise CircuitsError(f"{len(failed)} of {len(jobs)} job(s) failed (job {job.job_id}: "
                            f"{last}); see {job.paths.stderr}; re-run the same command to "
                            "redo only what is missing")
    return results


def cli_job(argv: Sequence[str]) -> str:
    """One job of :func:`run_cli_array`: ``circuits ARGV`` in a fresh process (its output goes to
    the job's log); a non-zero exit is an error carrying its last line."""
    proc = subprocess.run([sys.executable, "-m", "circuits_cli.cli", *argv],
                          capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        raise RuntimeError(lines[-1])
    return proc.stdout


#: options of the launching command that its jobs must not see (name -> takes a value)
LAUNCH_OPTIONS = {"--launcher": True, "--jobs": True, "--slurm-partition": True,
                  "--slurm-time": True, "--slurm-gpus": True, "--slurm-cpus": True}


def strip_launch_options(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            skip = LAUNCH_OPTIONS[name] and "=" not in a
            continue
        out.append(a)
    return out


def run_cli_array(argv: Sequence[str], jobs: int, **kw) -> list:
    """The command line ``argv`` (without its launch options) as ``jobs`` array jobs, job ``K``
    with ``--shard K/jobs``; keyword arguments as :func:`run_array`."""
    base = strip_launch_options(argv)
    return run_array(cli_job, [(base + ["--shard", f"{k}/{jobs}"],) for k in range(jobs)], **kw)
