"""Steering: is a unit causal for what it seems to detect?

Write the unit into the forward pass at every position of its layer and watch the predictions
move (Templeton et al. 2024 clamp a feature to a multiple of its maximum activation, the "Golden
Gate Bridge" feature). Two ways to write, for any kind of unit (neuron, direction, dictionary
feature), both through :mod:`circuits_cli.hooks`:

- ``clamp``: the unit's activation is set to ``strength x reference`` everywhere (``0`` removes
  it, a large value forces it on);
- ``add``: ``strength x reference`` times its decoder direction is added everywhere (negative
  strengths suppress it).

``reference`` is the unit's largest activation over the image set (its best dataset example),
so strengths are in units of "as much as the unit ever fires"; give ``reference=`` to fix it
(e.g. its largest activation on the images it detects, when steering images where it is
silent, or to compare sweeps over different image sets).

What the sweep reports, per strength (a dose-response curve):

- per class, the mean shift of its probability over all images;
- how many images change top-1, and to which classes;
- the **targeted effect**: the **supported classes** are those the unit's decoder direction
  pushes most through the network (its linear expanded weight to each class logit, summed over
  positions); boosting: the share of images *not* of those classes whose top-1 moves into them;
  suppressing: the mean probability of the supported classes on images *of* those classes;
  and, less all-or-nothing than top-1 when the supported classes are a family (all vehicles),
  the **top-5 share**: the share of the top-5 predictions that are supported classes, on the
  images not of them (boosting raises it) and on the images of them (suppressing lowers it);
  None for a model of 5 classes or fewer, whose top-5 is every class;
- the **side effects**: on images of *unrelated* classes (labelled, not supported), the top-1
  accuracy and the mean KL divergence of the class probabilities from the clean model's.

Labels come from the file names (ImageNet's ``wnid_...`` or the toy world's ``NNNNN_class.png``)
or a parent folder named after the class.
"""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CircuitsError
from ..units import Unit
from ..zoo.base import LoadedModel
from .activations import ImageSet, layer_activations, unit_activations

MODES = ("clamp", "add")
DEFAULT_STRENGTHS = {"clamp": (0.0, 0.5, 1.0, 2.0, 4.0), "add": (-2.0, -1.0, 0.0, 1.0, 2.0, 4.0)}



#: The largest steering strength, in multiples of the unit's largest activation. Far beyond it
#: the network's float32 activations overflow (1e308 gave inf, NaN and a crash in the figure
#: after the whole run); long before it the dose-response curve has saturated.
MAX_STRENGTH = 1e4


def check_strengths(strengths) -> None:
    """Refuse (one line) a strength that is not finite or beyond ±:data:`MAX_STRENGTH`."""
    bad = [s for s in strengths if not (math.isfinite(s) and abs(s) <= MAX_STRENGTH)]
    if bad:
        raise CircuitsError(f"steering strength {bad[0]:g} is out of range: strengths are "
                            f"multiples of the unit's largest activation, between "
                            f"-{MAX_STRENGTH:g} and {MAX_STRENGTH:g} (e.g. -2,0,2,4)")

def image_labels(model: LoadedModel, paths: Sequence[Path]) -> np.ndarray:
    """Class index of each image from its name (``n01440764_...``, ``00012_car.png``) or parent
    folder; -1 where none is found."""
    from ..images import wnid_of

    by_id = {c: i for i, c in enumerate(model.class_ids)}
    by_label = {_key(lab): i for i, lab in enumerate(model.labels)}
    out = np.full(len(paths), -1, dtype=np.int64)
    for row, p in enumerate(paths):
        p = Path(p)
        wnid = wnid_of(p)
        stem_tail = _key(p.stem.rsplit("_", 1)[-1])
        for key in (wnid, p.parent.name):
            if key in by_id:
                out[row] = by_id[key]
                break
        else:
            for key in (stem_tail, _key(p.parent.name)):
                if key in by_label:
                    out[row] = by_label[key]
                    break
    return out


def _key(label) -> str:
    return str(label).lower().replace("_", " ").strip()


def supported_classes(model: LoadedModel, unit: Unit, top: int = 3) -> tuple[list[int],
                                                                           np.ndarray]:
    """The ``top`` classes the unit's decoder direction pushes most (its linear expanded weight
    to each class logit, summed over positions), and the score of every class."""
    from ..connections import unit_to_logits

    scores = unit_to_logits(model, unit).double().cpu().numpy()
    order = np.argsort(-scores, kind="stable")[:top]
    return [int(i) for i in order], scores


@torch.no_grad()
def _logits(model: LoadedModel, images01: torch.Tensor, hook=None) -> torch.Tensor:
    from ..hooks import run_with_hooks

    return run_with_hooks(model, images01, fwd_hooks=[hook] if hook else ()).float()


@dataclass
class DoseLevel:
    """The predictions at one strength."""

    strength: float
    probs: np.ndarray  # (N, K)

    @property
    def top1(self) -> np.ndarray:
        return self.probs.argmax(1)


@dataclass
class SteeringResult:
    unit: str
    mode: str
    reference: float  # the unit's largest activation over the images
    labels: list[str]
    paths: list[Path]
    true: np.ndarray  # (N,) class index or -1
    supported: list[int]
    clean: np.ndarray  # (N, K) probabilities without steering
    levels: list[DoseLevel] = field(default_factory=list)
    reference_from: str = "the unit's max activation"  # or "the given reference"

    # --- derived measures ---------------------------------------------------------------------
    def _rows(self, which: str) -> np.ndarray:
        sup = np.isin(self.true, self.supported)
        if which == "supported":
            return np.flatnonzero(sup)
        if which == "unrelated":
            return np.flatnonzero(~sup & (self.true >= 0))
        return np.flatnonzero(~sup)  # "others": everything not of a supported class

    def measures(self, level: DoseLevel) -> dict:
        p, clean = level.probs, self.clean
        sup_rows, unrel, others = (self._rows(w) for w in ("supported", "unrelated", "others"))
        changed = np.flatnonzero(level.top1 != clean.argmax(1))
        outside = others[~np.isin(clean.argmax(1)[others], self.supported)]
        to = Counter(self.labels[c] for c in level.top1[changed])
        kl = (clean * (np.log(np.clip(clean, 1e-12, None))
                       - np.log(np.clip(p, 1e-12, None)))).sum(1)
        sup_prob = p[:, self.supported].sum(1)
        # with 5 classes or fewer the top-5 is every class: no information, reported as None
        top5 = self.top5_share(level) if p.shape[1] > 5 else np.full(len(p), np.nan)
        out = {
            "strength": level.strength,
            "changed_top1": int(len(changed)),
            "changed_to": dict(to.most_common(5)),
            "supported_prob_all": float(sup_prob.mean()),
            # of the other images not already predicted as a supported class, the share that
            # now is (so strength 0, or a model whose logits tie, moves nothing in)
            "moved_into_supported": _share(np.isin(level.top1[outside], self.supported)),
            "supported_prob_on_supported": _mean(sup_prob[sup_rows]),
            "top1_on_supported": _share(level.top1[sup_rows] == self.true[sup_rows]),
            "top5_share_others": _mean(top5[others], none_if_nan=True),
            "top5_share_on_supported": _mean(top5[sup_rows], none_if_nan=True),
            "top1_on_unrelated": _share(level.top1[unrel] == self.true[unrel]),
            "kl_on_unrelated": _mean(kl[unrel]),
            "n_supported": int(len(sup_rows)), "n_unrelated": int(len(unrel)),
        }
        return out

    def top5_share(self, level: DoseLevel, classes: Sequence[int] | None = None,
                   k: int = 5) -> np.ndarray:
        """(N,) per image, the share of its top-``k`` predictions at ``level`` that are in
        ``classes`` (default: the supported classes)."""
        classes = self.supported if classes is None else [int(c) for c in classes]
        top = np.argsort(-level.probs, axis=1, kind="stable")[:, :k]
        return np.isin(top, classes).mean(1)

    def class_shift(self, level: DoseLevel, top: int = 5) -> list[tuple[str, float]]:
        """The classes whose mean probability moved most (signed), largest |shift| first."""
        shift = level.probs.mean(0) - self.clean.mean(0)
        order = np.argsort(-np.abs(shift), kind="stable")[:top]
        return [(self.labels[i], float(shift[i])) for i in order]

    def sample_rows(self, n: int = 4) -> np.ndarray:
        """The images shown before and after: the first ``n`` not of a supported class (the
        ones boosting should move), else the first ``n``."""
        others = self._rows("others")
        return others[:n] if len(others) >= n else np.arange(min(n, len(self.paths)))

    def samples(self, n: int = 4, top: int = 5) -> list[dict]:
        """For :meth:`sample_rows`: the ``top`` classes clean and at the strongest strength."""
        strongest = max(self.levels, key=lambda lv: lv.strength)

        def ranked(p: np.ndarray) -> list[dict]:
            return [{"class": self.labels[i], "prob": float(p[i]),
                     "supported": int(i) in self.supported}
                    for i in np.argsort(-p, kind="stable")[:top]]

        return [{"path": str(self.paths[row]),
                 "true": self.labels[self.true[row]] if self.true[row] >= 0 else None,
                 "strength": strongest.strength, "before": ranked(self.clean[row]),
                 "after": ranked(strongest.probs[row])} for row in self.sample_rows(n)]

    def to_json(self) -> dict:
        return {"format": "circuits-steer/1", "unit": self.unit, "mode": self.mode,
                "reference": self.reference, "reference_from": self.reference_from,
                "n_images": len(self.paths),
                "supported_classes": [self.labels[i] for i in self.supported],
                "clean": self.measures(DoseLevel(0.0 if self.mode == "add" else math.nan,
                                                 self.clean)),
                "levels": [{**self.measures(lv),
                            "class_shift": [{"class": c, "shift": round(s, 6)}
                                            for c, s in self.class_shift(lv)]}
                           for lv in self.levels],
                "samples": self.samples()}

    def table(self) -> list[str]:
        """The per-strength measures as lines of text (what ``circuits steer`` and
        ``circuits trace --steer`` print): a title, a header and one row per strength."""
        def f(v, fmt="{:.3f}"):
            return "   -" if v is None else fmt.format(v)

        lines = [f"Steering {self.unit} ({self.mode}, strengths x {self.reference:.4g}, its "
                 f"largest activation) on {len(self.paths)} images; supported classes: "
                 f"{', '.join(self.labels[i] for i in self.supported)}",
                 "  strength  P(supported)  moved-in  top-5 sup  P(sup | sup imgs)  "
                 "top-5 | sup imgs  top-1 unrelated  KL unrelated  changed top-1"]
        for lv in map(self.measures, self.levels):
            lines.append(f"  {lv['strength']:>8g}  {f(lv['supported_prob_all']):>12}  "
                         f"{f(lv['moved_into_supported']):>8}  "
                         f"{f(lv['top5_share_others']):>9}  "
                         f"{f(lv['supported_prob_on_supported']):>17}  "
                         f"{f(lv['top5_share_on_supported']):>16}  "
                         f"{f(lv['top1_on_unrelated']):>15}  {f(lv['kl_on_unrelated']):>12}  "
                         f"{lv['changed_top1']:>5} -> {', '.join(lv['changed_to']) or '-'}")
        return lines


def _share(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if mask.size else None


def _mean(x: np.ndarray, none_if_nan: bool = False) -> float | None:
    if not x.size or (none_if_nan and np.isnan(x).any()):
        return None
    return float(x.mean())


def steer(model: LoadedModel, unit: Unit, images: str | Path | Sequence[str | Path] | ImageSet,
          *, mode: str = "add", strengths: Sequence[float] | None = None,
          supported: Sequence[int] | None = None, n_supported: int = 3,
          reference: float | None = None, cache_dir: str | Path | None = None, batch_size: int = 16,
          progress: bool = False) -> SteeringResult:
    """Sweep the strength of ``unit`` written into its layer and measure the predictions.

    ``reference``: the activation that strength 1 stands for (default: the unit's largest
    activation over ``images``)."""
    model.require_logits()
    from ..images import iter_batches

    if mode not in MODES:
        raise CircuitsError(f"unknown steering mode {mode!r}; use {' or '.join(MODES)}")
    strengths = list(DEFAULT_STRENGTHS[mode] if strengths is None else strengths)
    if not strengths or not all(math.isfinite(s) for s in strengths):
        raise CircuitsError("give one or more finite strengths, e.g. --strengths -2,0,2,4")
    check_strengths(strengths)
    if reference is not None:
        if not (math.isfinite(reference) and reference > 0):
            raise CircuitsError(f"the reference activation must be positive and finite, got "
                                f"{reference}")
        reference = float(reference)
    info = model.layer(unit.layer)
    acts = layer_activations(model, info.name, images, cache_dir=cache_dir,
                             batch_size=batch_size, progress=progress)
    reference_from = "the given reference" if reference is not None else "the unit's max activation"
    if reference is None:
        reference = float(unit_activations(model, unit, acts, batch_size).column("max").max())
    if not reference > 0:
        raise CircuitsError(f"{unit} never activates on these {acts.n_images} images (largest "
                            f"activation {reference:.3g}); steer a unit that fires on them")
    if supported is None:
        supported, _ = supported_classes(model, unit, n_supported)
    labels = list(model.labels) or [f"class {i}" for i in range(_n_classes(model))]
    paths = list(acts.paths)
    size = int(acts.preprocessing.get("size", model.input_size))
    resize = acts.preprocessing.get("resize")

    def hook_for(s: float):
        if mode == "clamp":
            return (info.name, lambda a, _h: unit.clamp(a, s * reference))
        return (info.name, lambda a, _h: unit.write(a, s * reference))

    probs = {s: [] for s in strengths}
    clean = []
    for x, _ok, _ in iter_batches(paths, batch=batch_size, size=size, resize=resize):
        clean.append(torch.softmax(_logits(model, x), 1).cpu().numpy())
        for s in strengths:
            probs[s].append(torch.softmax(_logits(model, x, hook_for(s)), 1).cpu().numpy())
    clean_p = np.concatenate(clean)
    if len(clean_p) != len(paths):
        raise CircuitsError(f"{len(paths) - len(clean_p)} image(s) could not be read any more; "
                            "re-run to refresh the activation cache")
    return SteeringResult(unit=str(unit), mode=mode, reference=reference, labels=labels,
                          paths=paths, true=image_labels(model, paths),
                          supported=[int(i) for i in supported], clean=clean_p,
                          reference_from=reference_from,
                          levels=[DoseLevel(float(s), np.concatenate(probs[s]))
                                  for s in strengths])


def _n_classes(model: LoadedModel) -> int:
    return int(_logits(model, torch.zeros(1, 3, model.input_size, model.input_size)).shape[1])


def dose_response_figure(result: SteeringResult, samples: int = 4):
    """A matplotlib Figure: the dose-response curves (left) and, for ``samples`` images, the
    top-5 classes before and at the strongest boost (right)."""
    from matplotlib.figure import Figure

    xs = [lv.strength for lv in result.levels]
    ms = [result.measures(lv) for lv in result.levels]
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    gs = fig.add_gridspec(2, 1 + samples, width_ratios=[2.8] + [1] * samples)
    ax = fig.add_subplot(gs[:, 0])
    names = [result.labels[i] for i in result.supported]
    sup_names = ", ".join(names) if len(names) <= 4 else \
        f"{', '.join(names[:3])} and {len(names) - 3} more"

    def curve(key, label, style):
        if all(m[key] is None for m in ms):
            return  # not measurable here (no such images, or too few classes for a top-5)
        ys = [m[key] if m[key] is not None else np.nan for m in ms]
        ax.plot(xs, ys, style, label=label, lw=2, ms=5)

    curve("supported_prob_all", "P(supported), all images", "o-")
    curve("supported_prob_on_supported", "P(supported), their images", "D-")
    curve("moved_into_supported", "moved into supported, others", "s-")
    curve("top5_share_others", "top-5 share supported, others", "v:")
    curve("top5_share_on_supported", "top-5 share supported, theirs", "P:")
    curve("top1_on_unrelated", "top-1 accuracy, unrelated", "^-")
    ax2 = ax.twinx()
    ax2.plot(xs, [m["kl_on_unrelated"] if m["kl_on_unrelated"] is not None else np.nan
                  for m in ms], "k--", lw=1.5, label="KL, unrelated (right axis)")
    ax2.set_ylabel("KL(clean || steered), nats")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"strength ({result.mode}, x {result.reference:.3g} = "
                  f"{result.reference_from})")
    ax.set_ylabel("share / probability")
    ax.set_title(textwrap.fill(f"Steering {result.unit}", 56, break_long_words=True)
                 + f"\nsupported: {sup_names}", fontsize=10)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    ax.grid(alpha=0.3)

    strongest = max(result.levels, key=lambda lv: lv.strength)
    for col, row in enumerate(result.sample_rows(samples), start=1):
        for r, (probs, title) in enumerate(((result.clean[row], "clean"),
                                            (strongest.probs[row],
                                             f"strength {strongest.strength:g}"))):
            a = fig.add_subplot(gs[r, col])
            top = np.argsort(-probs)[:5][::-1]
            colours = ["tab:orange" if i in result.supported else "tab:blue" for i in top]
            a.barh(range(len(top)), probs[top], color=colours)
            a.set_yticks(range(len(top)), [_short(result.labels[i]) for i in top], fontsize=7)
            a.set_xlim(0, 1)
            a.tick_params(axis="x", labelsize=7)
            name = _short(Path(result.paths[row]).name, 22)
            a.set_title(f"{name}\n{title}" if r == 0 else title, fontsize=8)
    return fig


def _short(text: str, n: int = 16) -> str:
    from ..images import display_name

    text = display_name(text)
    return text if len(text) <= n else text[:n - 1] + "…"
