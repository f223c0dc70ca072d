"""Units: one channel of one layer, written ``LAYER:CHANNEL`` (``mixed4c:447``, ``4c:447``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import CircuitsError
from .zoo.base import LoadedModel


@dataclass(frozen=True, order=True)
class Unit:
    layer: str
    channel: int

    def __str__(self) -> str:
        return f"{self.layer}:{self.channel}"

    @property
    def slug(self) -> str:
        """A file-name-safe form: ``inception_4c/3x3:12`` -> ``inception_4c-3x3_12``."""
        from .files import slug

        return f"{slug(self.layer)}_{self.channel}"


_UNIT = re.compile(r"^(?P<layer>[^:\s]+):(?P<channel>-?\d+)$")


def parse_unit(spec: str, model: LoadedModel) -> Unit:
    """Parse and check ``LAYER:CHANNEL`` against ``model``; short Inception names allowed."""
    m = _UNIT.match(spec.strip())
    if not m:
        raise CircuitsError(f"malformed unit {spec!r}; write LAYER:CHANNEL, e.g. "
                            f"{_example(model)}")
    info = model.layer(m["layer"])
    channel = int(m["channel"])
    if not 0 <= channel < info.channels:
        raise CircuitsError(f"channel {channel} is out of range for layer {info.name!r}, which "
                            f"has {info.channels} channels (0-{info.channels - 1})")
    return Unit(info.name, channel)


def parse_channels(spec: str, n_channels: int, layer: str = "layer") -> list[int]:
    """``"0-63,447"`` or ``"all"`` -> sorted unique channel indices, each checked against range."""
    spec = spec.strip()
    if spec.lower() == "all":
        return list(range(n_channels))
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise CircuitsError(f"malformed unit list {spec!r}; write e.g. '0-63,447' or 'all'")
        lo = int(m[1])
        hi = int(m[2]) if m[2] is not None else lo
        if hi < lo:
            raise CircuitsError(f"empty range {part!r} in {spec!r}; write LOW-HIGH, LOW <= HIGH")
        if hi >= n_channels:
            raise CircuitsError(f"channel {hi} is out of range for {layer!r}, which has "
                                f"{n_channels} channels (0-{n_channels - 1})")
        out.update(range(lo, hi + 1))
    return sorted(out)


def _example(model: LoadedModel) -> str:
    names = list(model.layers)
    return f"'{names[len(names) // 2]}:0'" if names else "'layer:0'"
