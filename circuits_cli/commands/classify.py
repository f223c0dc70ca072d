"""``circuits classify``: the model's top classes for images, a sanity check of a model's weights
and preprocessing (and of the dataset examples one is about to trust)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import click

from .common import model_options
from .options import json_option, quiet_option, top_k_option


@dataclass
class Prediction:
    """The top classes of one image; ``true_rank`` is the 0-based rank of the class named by the
    file's wnid prefix (None when the file name carries none, or the model has no such class)."""

    image: Path
    top: list[dict] = field(default_factory=list)  # {"index", "label", "prob"}, best first
    true_index: int | None = None
    true_rank: int | None = None

    def record(self) -> dict:
        return {"image": str(self.image), "top": self.top}


def classify_files(model, files: list[Path], top: int = 5, batch: int = 32,
                   progress: bool = False, failed: list[Path] | None = None
                   ) -> tuple[list[Prediction], int]:
    """Classify image ``files`` with a :class:`~circuits_cli.zoo.base.LoadedModel`.

    Returns the predictions of the files that could be read, in order, and the number of files
    that could not (appended to ``failed`` when given). ``true_rank`` is filled from
    ``n\\d{8}`` file-name prefixes when the model has ``class_ids``.
    """
    import torch

    from ..images import iter_batches, wnid_of
    from ..progress import Progress

    size = model.input_size
    class_index = {wnid: i for i, wnid in enumerate(model.class_ids)}
    predictions: list[Prediction] = []
    skipped = 0
    bar = Progress(len(files), "classify", "img", enabled=progress)
    try:
        for x, ok, n_skipped in iter_batches(files, batch=batch, size=size,
                                             resize=round(size * 256 / 224), failed=failed):
            skipped += n_skipped
            bar.update(len(ok) + n_skipped)
            if not ok:
                continue
            with torch.no_grad():
                probs = torch.softmax(model.logits(x).float(), dim=1).cpu()
            k = min(top, probs.shape[1])
            order = probs.argsort(dim=1, descending=True)
            for path, p, rank_order in zip(ok, probs, order, strict=True):
                pred = Prediction(image=path, top=[
                    {"index": int(i), "label": model.label(int(i)), "prob": round(float(p[i]), 6)}
                    for i in rank_order[:k]])
                wnid = wnid_of(path)
                if wnid in class_index:
                    pred.true_index = class_index[wnid]
                    pred.true_rank = int((rank_order == pred.true_index).nonzero()[0, 0])
                predictions.append(pred)
    finally:
        bar.close()
    return predictions, skipped


def accuracy(predictions: list[Prediction]) -> tuple[int, float, float] | None:
    """(number of labelled images, top-1, top-5 accuracy) over predictions with a known class."""
    ranks = [p.true_rank for p in predictions if p.true_rank is not None]
    if not ranks:
        return None
    n = len(ranks)
    return n, sum(r == 0 for r in ranks) / n, sum(r < 5 for r in ranks) / n


def _table(predictions: list[Prediction]) -> str:
    from ..images import display_name

    lines = []
    width = max((len(t["label"]) for p in predictions for t in p.top), default=10)
    for pred in predictions:
        lines.append(display_name(pred.image))
        for rank, t in enumerate(pred.top, 1):
            mark = "  *" if t["index"] == pred.true_index else ""
            lines.append(f"  {rank:>2}. {t['prob']:7.2%}  {t['label']:<{width}}  "
                         f"[{t['index']}]{mark}")
    return "\n".join(lines)


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path),
                metavar="IMAGE...")
@top_k_option(5, "How many classes to show per image.")
@json_option
@quiet_option
@click.option("--batch", default=32, show_default=True, type=click.IntRange(min=1),
              help="Images per forward pass.")
@model_options
def classify(images, top_k, as_json, quiet, batch, load_model):
    """Top classes of each IMAGE (files or folders, searched recursively).

    Images are resized (shorter side 256) and centre-cropped to 224 as in ImageNet evaluation.
    --json prints a JSON list: {image, top: [{index, label, prob}, ...]} per image.
    When file names start with an ImageNet wnid (n01440764_tench.JPEG), the true class is marked
    with * and top-1 / top-5 accuracy is printed at the end.

    \b
    Example:
      circuits classify -m googlenet-bvlc ../shared/images/imagenet-samples
    """
    from ..images import find_images, skipped_note

    files, not_images = find_images(images)
    model = load_model()
    model.require_logits()
    failed: list[Path] = []
    predictions, _ = classify_files(model, files, top=top_k, batch=batch, progress=not quiet,
                                    failed=failed)
    note = skipped_note(not_images, failed)
    if note:
        click.echo(f"Warning: {note}.", err=True)
    if not predictions:
        from ..errors import CircuitsError

        raise CircuitsError(f"none of the {len(files)} image file(s) could be read; check that "
                            "they are images (JPEG, PNG, ...)")
    if as_json:
        click.echo(json.dumps([p.record() for p in predictions], indent=2))
    else:
        click.echo(_table(predictions))
    acc = accuracy(predictions)
    if acc is not None:
        n, top1, top5 = acc
        click.echo(f"Accuracy on {n} image(s) labelled by wnid file names: "
                   f"top-1 {top1:.3f}, top-5 {top5:.3f}", err=as_json)
