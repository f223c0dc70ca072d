"""The command line's one vocabulary: options and value types shared by every command.

The same word means the same thing everywhere: ``--top-k N`` how many (units, classes, images),
``--out DIR`` always a folder, ``--json`` JSON on stdout, ``--quiet`` no progress,
``--cache-dir DIR`` the cache root (as ``$CIRCUITS_CACHE``) wherever images are read. Values are
checked by Click types before anything is loaded: a malformed UNIT, unit list, ``K/N`` shard or
range is a one-line usage error (exit 2). Whether a layer or channel exists is checked against
the model once it is loaded (with the closest layer name suggested).

Every option can also come from the environment: ``CIRCUITS_<COMMAND>_<OPTION>`` (Click's
``auto_envvar_prefix``), e.g. ``CIRCUITS_VISUALIZE_STEPS=128``; ``$CIRCUITS_MODEL`` and
``$CIRCUITS_CACHE`` apply to every command.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import click

CACHE_ENV = "CIRCUITS_CACHE"
METHOD_HELP = ("How to compute expanded weights: exact (kernels multiplied out: a conv feeding a "
               "conv, BatchNorm folded in, an Inception block's input to its output), linear "
               "(the linear "
               "approximation: ReLU as identity, max-pool as average pool; any two layers), "
               "auto (exact where it exists).")


class UnitType(click.ParamType):
    """``LAYER:CHANNEL`` (``mixed4c:447``, ``4c:447``) or ``LAYER@FILE[#ROW]``; the layer and
    the rest are checked against the model later (units.parse_unit), with the closest name
    suggested."""

    name = "UNIT"
    # only the shape LAYER:SOMETHING: what SOMETHING may be (a channel today, other kinds of
    # unit later) is the units module's to say, once the model is known
    _re = re.compile(r"^[^:@\s]+[:@]\S+$")

    def convert(self, value, param, ctx):
        text = str(value).strip()
        if not self._re.match(text):
            self.fail(f"malformed unit {value!r}; write LAYER:CHANNEL (e.g. mixed4c:447) or "
                      "LAYER@FILE[#ROW] (a direction from a file)", param, ctx)
        return text


class ChannelListType(click.ParamType):
    """``all`` or channels and ranges: ``0-63,447``; ranges run LOW-HIGH with LOW <= HIGH."""

    name = "LIST"
    _part = re.compile(r"(\d+)(?:-(\d+))?")

    def convert(self, value, param, ctx):
        text = str(value).strip()
        if text.lower() == "all":
            return "all"
        for part in text.split(","):
            m = self._part.fullmatch(part.strip())
            if not m:
                self.fail(f"malformed unit list {value!r}; write e.g. '0-63,447' or 'all'",
                          param, ctx)
            if m[2] is not None and int(m[2]) < int(m[1]):
                self.fail(f"empty range {part.strip()!r} in {value!r}; write LOW-HIGH, "
                          "LOW <= HIGH", param, ctx)
        return text


class InputUnitsType(click.ParamType):
    """``LAYER:C,C,LOW-HIGH,...`` (a bare channel or range belongs to the layer named before),
    or directions ``LAYER@FILE[#ROW]``."""

    name = "LAYER:C,..."
    _part = re.compile(r"(?:[^:\s,]+:)?(\d+)(?:-(\d+))?")

    def convert(self, value, param, ctx):
        text = str(value).strip()
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            self.fail("no input units given; write LAYER:C,C,... e.g. 'mixed4b:237,373'",
                      param, ctx)
        if ":" not in parts[0] and "@" not in parts[0]:
            self.fail(f"input {parts[0]!r} has no layer; write LAYER:C first, e.g. "
                      f"'mixed4b:{parts[0]}'", param, ctx)
        for part in parts:
            if "@" in part:  # a direction (LAYER@FILE[#ROW]): units.parse_inputs checks it
                continue
            m = self._part.fullmatch(part)
            if not m:
                self.fail(f"malformed input unit {part!r} in {value!r}; write LAYER:C,C,... "
                          "e.g. 'mixed4b:237,373'", param, ctx)
            if m[2] is not None and int(m[2]) < int(m[1]):
                self.fail(f"empty range {part!r} in {value!r}; write LOW-HIGH, LOW <= HIGH",
                          param, ctx)
        return text


class TopKType(click.ParamType):
    """``N`` (inputs kept per unit at every hop) or ``N,M,...`` (one per hop, the last
    repeating), each 1 to 32: a tuple of ints."""

    name = "N[,N...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        if not re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
            self.fail(f"malformed top-k {value!r}; write a number (3) or one per hop (5,2)",
                      param, ctx)
        ks = tuple(int(k) for k in text.split(","))
        if any(not 1 <= k <= 32 for k in ks):
            self.fail(f"top-k {value!r} is out of range; each number must be 1 to 32",
                      param, ctx)
        return ks


class ShardType(click.ParamType):
    """``K/N``: every N-th item starting at the K-th, 0 <= K < N."""

    name = "K/N"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
        if not m:
            self.fail(f"malformed --shard {value!r}; write K/N with 0 <= K < N, e.g. 0/4 "
                      "(Slurm: --shard $SLURM_ARRAY_TASK_ID/N with --array=0-(N-1))",
                      param, ctx)
        k, n = int(m[1]), int(m[2])
        if n < 1 or not 0 <= k < n:
            self.fail(f"--shard {value!r} is out of range; K must be 0..N-1 and N >= 1",
                      param, ctx)
        return k, n


class LayerType(click.ParamType):
    """A layer name; whether it exists is checked against the model (closest name suggested)."""

    name = "LAYER"

    def convert(self, value, param, ctx):
        text = str(value).strip()
        if not text or any(c.isspace() for c in text) or ":" in text:
            self.fail(f"malformed layer name {value!r}; 'circuits layers' lists them "
                      "(e.g. mixed4c)", param, ctx)
        return text


UNIT = UnitType()
CHANNELS = ChannelListType()
INPUT_UNITS = InputUnitsType()
TOP_K = TopKType()
SHARD = ShardType()
LAYER = LayerType()


def top_k_option(default: int, help: str, short: str | None = "-k", legacy: tuple = ("--top",),
                 type=None):
    """``--top-k N`` (with ``short``), the one spelling of 'how many'; earlier spellings stay as
    hidden aliases."""
    names = ["--top-k"] + ([short] if short else [])
    kind = type or click.IntRange(min=1)

    def decorate(func):
        @click.option(*names, "top_k", default=default, show_default=True, type=kind, help=help)
        @click.option(*legacy, "top_k_alias", default=None, type=kind, hidden=True)
        @functools.wraps(func)
        def wrapper(*args, top_k, top_k_alias, **kwargs):
            return func(*args, top_k=top_k if top_k_alias is None else top_k_alias, **kwargs)

        return wrapper

    return decorate


def out_option(default_help: str, default=None):
    """``--out DIR``: always a folder."""
    return click.option("--out", "out_dir", type=click.Path(path_type=Path), default=default,
                        metavar="DIR", show_default=default is not None,
                        help=f"Output folder  [default: {default_help}]" if default is None
                        else "Output folder.")


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as JSON on stdout (progress goes to stderr).")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress output.")


def cache_option(func):
    """``--cache-dir DIR``: the cache root, as ``$CIRCUITS_CACHE`` (activations and renders)."""
    return click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
                        envvar=CACHE_ENV, metavar="DIR",
                        help="Cache root: activations/ and renders/ go there  [default: "
                             "$CIRCUITS_CACHE or ~/.cache/circuits]")(func)


def images_option(required: bool = True, help: str | None = None):
    return click.option("--images", "images", required=required, multiple=True,
                        type=click.Path(path_type=Path), metavar="DIR",
                        help=help or "Folder (searched recursively) or files of images; "
                                     "repeatable. Activations are computed once and cached "
                                     "(CACHE/activations).")


def activation_cache_option(func):
    """``--cache DIR``: an activation cache ('circuits cache') read instead of ``--images``."""
    return click.option("--cache", "activation_cache_dir", type=click.Path(path_type=Path),
                        default=None, metavar="DIR",
                        help="Read the activations from this activation cache ('circuits "
                             "cache LAYER ... --out DIR') instead of --images: no forward "
                             "pass. A cache of sampled positions ranks each image by the "
                             "max over its cached positions.")(func)


def images_or_cache(images, cache_folder, required: bool = True):
    """Exactly one of ``--images`` and ``--cache`` (or neither when not ``required``): the
    :class:`~circuits_cli.cache.ActivationCache` opened (a one-line error for a folder that is
    not one), or None when images are read. Checked before the model loads."""
    from ..errors import CircuitsError

    if images and cache_folder is not None:
        raise CircuitsError("give --images or --cache, not both: --cache reads the activations "
                            "that 'circuits cache' computed over its images")
    if cache_folder is None:
        if required and not images:
            raise CircuitsError("give --images DIR (a folder of images) or --cache DIR (an "
                                "activation cache written by 'circuits cache')")
        return None
    from ..cache import open_cache

    return open_cache(cache_folder)


def render_options_with(steps: int = 512, param: bool = True):
    """``--steps``, ``--size``, ``--seed``, ``--param``, ``--no-render``: the feature
    visualizations, with ``steps`` as the default step count (``param=False`` leaves out
    ``--param``)."""
    def decorate(func):
        if param:
            func = click.option("--param", type=click.Choice(["fourier", "maco"]),
                                default="fourier", show_default=True,
                                help="Feature visualization parameterization (as in 'circuits "
                                     "visualize --param'); renders are cached per "
                                     "parameterization.")(func)
        func = click.option("--no-render", is_flag=True,
                            help="Skip feature visualizations (units drawn as 'no render')."
                            )(func)
        func = click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0,
                            show_default=True, help="Seed of the feature visualizations.")(func)
        func = click.option("--size", type=click.IntRange(16, 1024), default=128,
                            show_default=True, help="Feature visualization size in pixels.")(func)
        func = click.option("--steps", type=click.IntRange(1, 100000), default=steps,
                            show_default=True,
                            help="Feature visualization steps; renders come from the cache of "
                                 "'circuits visualize' (same steps/size/seed), fewer steps for "
                                 "a quick look.")(func)
        return func

    return decorate


render_options = render_options_with()


def parse_strengths(ctx, param, value):
    """``S,S,...``: a comma-separated list of numbers (steering strengths); None stays None."""
    if value is None:
        return None
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. "
                                 "'-2,0,2,4'") from None
    if not out:
        raise click.BadParameter("give at least one strength, e.g. '-2,0,2,4'")
    if not all(math.isfinite(v) for v in out):  # as steer() requires, but before any work
        raise click.BadParameter(f"{value!r}: strengths must be finite numbers, e.g. '-2,0,2,4'")
    from ..errors import CircuitsError
    from ..evidence.steering import check_strengths

    try:
        check_strengths(out)
    except CircuitsError as err:
        raise click.BadParameter(str(err)) from None
    return out


STEER_MODE_HELP = ("add: add STRENGTH x max-activation times the unit's decoder direction at "
                   "every position; clamp: set the unit's activation to STRENGTH x "
                   "max-activation everywhere.")


def activation_cache(root: Path | None) -> Path:
    """The activations folder under the cache root given by ``--cache-dir`` (or the default)."""
    from ..files import cache_dir

    return cache_dir("activations", root)


def render_cache(root: Path | None) -> Path:
    from ..files import cache_dir

    return cache_dir("renders", root)


@contextmanager
def warnings_to_stderr():
    """Show the API's warnings (skipped files, ...) as ``Warning: ...`` lines on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            yield
        finally:
            shown = set()
            for w in caught:  # each once: several passes over one folder skip the same files
                if issubclass(w.category, UserWarning) and str(w.message) not in shown:
                    shown.add(str(w.message))
                    click.echo(f"Warning: {w.message}", err=True)


def launcher_options(func):
    """``--launcher none|local|slurm``, ``--jobs N`` and ``--slurm-*``: run the command as N array
    jobs (one ``--shard K/N`` each) through submitit; the command receives ``launch``, a dict
    (``launcher`` "none" when it runs here)."""

    @click.option("--launcher", type=click.Choice(["none", "local", "slurm"]), default="none",
                  show_default=True,
                  help="Run as --jobs array jobs (one --shard each) through submitit: on Slurm, "
                       "or as local processes; then finish here.")
    @click.option("--jobs", type=click.IntRange(min=1), default=4, show_default=True,
                  help="With --launcher: how many array jobs.")
    @click.option("--slurm-partition", default=None, help="With --launcher slurm: the partition.")
    @click.option("--slurm-time", type=click.IntRange(min=1), default=240, show_default=True,
                  help="With --launcher: minutes per job.")
    @click.option("--slurm-gpus", type=click.IntRange(min=0), default=1, show_default=True,
                  help="With --launcher slurm: GPUs per job.")
    @click.option("--slurm-cpus", type=click.IntRange(min=1), default=8, show_default=True,
                  help="With --launcher slurm: CPUs per job.")
    @functools.wraps(func)
    def wrapper(*args, launcher, jobs, slurm_partition, slurm_time, slurm_gpus, slurm_cpus,
                **kwargs):
        launch = {"launcher": launcher, "jobs": jobs,
                  "slurm": {"partition": slurm_partition, "timeout_min": slurm_time,
                            "gpus_per_node": slurm_gpus, "cpus_per_task": slurm_cpus}}
        return func(*args, launch=launch, **kwargs)

    return wrapper


def launch_array(launch: dict, shard, folder: Path, name: str, quiet: bool = False) -> bool:
    """With ``--launcher``: run this command line as array jobs (one ``--shard K/N`` each) and
    return True once they all finished; False when it is to run here. ``--shard`` and
    ``--launcher`` together are a one-line error."""
    if launch["launcher"] == "none":
        return False
    from ..errors import CircuitsError
    from ..launch import run_cli_array
    from .common import ARGV_KEY

    if shard is not None:
        raise CircuitsError("--shard is one job of an array; with --launcher the jobs are "
                            "started for you (use --jobs)")
    ctx = click.get_current_context()
    argv = ctx.meta.get(ARGV_KEY)
    if not argv:
        raise CircuitsError("--launcher needs the command line ('circuits ...')")
    log = None if quiet else (lambda line: click.echo(line, err=True))
    run_cli_array(argv, launch["jobs"], launcher=launch["launcher"], folder=folder,
                  slurm=launch["slurm"], name=name, log=log)
    return True
