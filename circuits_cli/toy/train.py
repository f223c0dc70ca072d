"""Training the toy model: a recipe recorded inside the checkpoint, so that anyone can redo it.

``circuits toy train --out FILE`` runs :func:`train` with the default :class:`Recipe` (the one
that produced the shipped ``circuits_cli/zoo/data/toy.pt``) and writes a checkpoint::

    {"format": "circuits-toy/1", "arch": {...}, "state_dict": {...}, "classes": [...],
     "recipe": {...}, "metrics": {"held_out_accuracy": ..., "train_seconds": ..., ...}}

Training scenes are rendered once (seed ``recipe.seed``) and augmented on the fly with horizontal
flips and small translations; the held-out set is rendered from a different seed
(``recipe.held_out_seed``), so no held-out scene is ever trained on.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..hooks import hooks
from .model import BLOCKS, DEFAULT_ARCH, ToyInceptionV1, block_channels, n_parameters, preprocess
from .world import CLASSES, PARTS, render_scenes, to_tensor

FORMAT = "circuits-toy/1"

#: The shipped recipe's units with targets of their own: the car unit marks the whole of every
#: car, and two units of mixed4a mark wheels and windows wherever they are (see
#: :attr:`Recipe.unit_targets`). With channel dropout on the rest of mixed4a, the car unit
#: comes to read those two first, and to check where they are.
UNIT_TARGETS = {"mixed4b:99": "car@box", "mixed4a:63": "wheels", "mixed4a:37": "windows"}


@dataclass
class Recipe:
    """Everything that determines the trained weights (up to floating-point nondeterminism)."""

    seed: int = 1                 # training scenes, initialisation and batch order
    n_train: int = 16_000         # training scenes, balanced over the classes
    epochs: int = 6
    batch_size: int = 64
    lr: float = 3e-3              # AdamW peak learning rate (linear warm-up, cosine decay)
    warmup_steps: int = 100
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    flip: bool = True             # augmentation: random horizontal flip
    translate: int = 4            # augmentation: random shift of up to this many pixels
    size: int = 64
    held_out_seed: int = 1_000_003
    n_held_out: int = 1_200
    threads: int = 1              # torch.set_num_threads during training
    #: units with a target of their own besides the classification, ``{"layer:channel": what}``
    #: for units of mixed blocks. ``what`` is a part (the unit marks every cell a box of that
    #: part covers, on an object or lying about), a class (a 2-pixel square at the centre of
    #: each object of that class) or ``"class@box"`` (every cell of the object's box, shrunk
    #: by half a cell of the 8x8 grid on every side). The unit is trained by logistic loss on
    #: its pre-activation, against the target max-pooled to the unit's grid; elsewhere it is
    #: trained to stay silent.
    unit_targets: dict = field(default_factory=lambda: dict(UNIT_TARGETS))
    unit_weight: float = 1.0      # weight of the units' losses against the classification's
    unit_pos_weight: float = 2.0  # weight of a marked cell against an unmarked one
    #: drop whole channels of ``dropout_layer``'s output while training (``Dropout2d``), all but
    #: the ``dropout_keep`` channels, so that the units after it rely on those kept channels
    #: more than on any other one
    channel_dropout: float = 0.8
    dropout_layer: str = "mixed4a"
    dropout_keep: tuple = (63, 37)
    arch: dict = field(default_factory=lambda: dict(DEFAULT_ARCH))


def _arch(record: dict) -> dict:
    """An architecture as a checkpoint stores it, with its lists made tuples again."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}


def recipe_from(record: dict) -> Recipe:
    """The :class:`Recipe` a checkpoint records (fields this version does not know are left
    out; the architecture's lists become tuples again)."""
    known = {f for f in Recipe.__dataclass_fields__}
    kw = {k: v for k, v in record.items() if k in known}
    if "arch" in kw:
        kw["arch"] = _arch(kw["arch"])
    if "dropout_keep" in kw:
        kw["dropout_keep"] = tuple(kw["dropout_keep"])
    return Recipe(**kw)


def initial_module(recipe: Recipe) -> ToyInceptionV1:
    """The network as :func:`train` starts it: the recipe's seed, then the initialisation of
    :class:`ToyInceptionV1`. Training starts from exactly these weights, so a trained kernel
    can be compared with what it was before any training."""
    torch.manual_seed(recipe.seed)
    return ToyInceptionV1(recipe.arch)


def _load() -> list[float] | None:
    """The machine's 1, 5 and 15-minute load averages (None where the OS does not say)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _unit_conv(arch: dict, unit: str) -> tuple[str, int]:
    """``("mixed4b_3x3_pre_relu_conv", 51)``: the convolution computing ``unit`` ("layer:channel"
    of a mixed block) and the unit's channel in it."""
    layer, channel = unit.rsplit(":", 1)
    if layer not in BLOCKS:
        raise ValueError(f"unit targets need a mixed block's unit, not {unit!r}")
    c = int(channel)
    for branch, n in block_channels(arch[layer]).items():
        if c < n:
            conv = "pool_reduce" if branch == "pool" else branch
            return f"{layer}_{conv}_pre_relu_conv", c
        c -= n
    total = sum(block_channels(arch[layer]).values())
    raise ValueError(f"{unit!r}: {layer} has {total} channels (0 to {total - 1})")


def with_unit_targets(recipe: Recipe, targets: dict) -> Recipe:
    """``recipe`` with ``targets`` (``{"layer:channel": what}``) as its only unit targets, and
    the channel dropout keeping exactly the targeted units of its ``dropout_layer``: the recipe
    that plants the car circuit at other units. Raises ValueError for a unit that is not a
    mixed block's or a target that is not a part, a class or ``CLASS@box``."""
    from dataclasses import replace

    for unit, what in targets.items():
        layer, _, channel = unit.rpartition(":")
        if not layer or not channel.isdigit():
            raise ValueError(f"{unit!r} is not a unit: expected LAYER:CHANNEL, e.g. mixed4a:12")
        _unit_conv(recipe.arch, unit)
        name = what[:-4] if what.endswith("@box") else what
        if name not in CLASSES and (what.endswith("@box") or name not in PARTS):
            raise ValueError(f"unknown unit target {what!r} for {unit}: a part "
                             f"({', '.join(PARTS)}), a class ({', '.join(CLASSES)}) or CLASS@box")
    keep = tuple(int(u.rsplit(":", 1)[1]) for u in targets
                 if u.rsplit(":", 1)[0] == recipe.dropout_layer)
    return replace(recipe, unit_targets=dict(targets), dropout_keep=keep)


def _target_maps(metas, size: int, targets: dict) -> torch.Tensor:
    """(N, len(targets), size, size) uint8: each unit's target in image pixels (see
    :attr:`Recipe.unit_targets`)."""
    out = torch.zeros(len(metas), len(targets), size, size, dtype=torch.uint8)
    for k, what in enumerate(targets.values()):
        for i, m in enumerate(metas):
            scale = size / m["size"]
            if what.endswith("@box") and what[:-4] in CLASSES:
                if m["cls"] != what[:-4]:
                    continue
                x0, y0, x1, y1 = m["object"]
                s = scale * 4  # half a cell of the 8x8 grid, in from every side
                boxes = [(x0 * scale + s, y0 * scale + s, x1 * scale - s, y1 * scale - s)]
            elif what in CLASSES:
                if m["cls"] != what:
                    continue
                x0, y0, x1, y1 = m["object"]
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                boxes = [(cx - 1, cy - 1, cx + 1, cy + 1)]
            elif what in PARTS:
                boxes = [b for src in (m["parts"], m["loose"]) for b in src.get(what, [])]
            else:
                raise ValueError(f"unknown unit target {what!r}: a part, a class or CLASS@box")
            for x0, y0, x1, y1 in boxes:
                a, b = max(0, int(y0)), min(size, int(math.ceil(y1)))
                c, d = max(0, int(x0)), min(size, int(math.ceil(x1)))
                out[i, k, a:b, c:d] = 1
    return out


def _augment(x: torch.Tensor, recipe: Recipe, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and translations (edge-replicating) of a float batch."""
    n = x.shape[0]
    if recipe.flip:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    t = recipe.translate
    if t > 0:
        padded = F.pad(x, (t, t, t, t), mode="replicate")
        dx = torch.randint(0, 2 * t + 1, (n,), generator=gen)
        dy = torch.randint(0, 2 * t + 1, (n,), generator=gen)
        h, w = x.shape[2:]
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return x


@torch.no_grad()
def evaluate(module: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch: int = 256) -> float:
    """Top-1 accuracy of ``module`` (taking preprocessed input) on [0, 1] images."""
    was = module.training
    module.eval()
    correct = 0
    for i in range(0, len(images), batch):
        logits = module(preprocess(images[i:i + batch]))
        correct += int((logits.argmax(1) == labels[i:i + batch]).sum())
    module.train(was)
    return correct / max(1, len(images))


def _tty() -> bool:
    """tqdm bars only on a terminal: in a log they are noise (the epoch lines say enough)."""
    import sys

    return sys.stderr.isatty()


def train(recipe: Recipe | None = None, log: Callable[[str], None] = print,
          progress: bool = True) -> dict:
    """Train a :class:`ToyInceptionV1` by ``recipe``; returns the checkpoint dict."""
    from tqdm.auto import tqdm

    recipe = recipe or Recipe()
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        t0, cpu0 = time.perf_counter(), time.process_time()
        load0 = _load()
        gen = torch.Generator().manual_seed(recipe.seed)
        log(f"rendering {recipe.n_train} training scenes (seed {recipe.seed}) and "
            f"{recipe.n_held_out} held-out scenes (seed {recipe.held_out_seed})")
        with tqdm(total=recipe.n_train, desc="scenes", unit="img",
                  disable=not progress or not _tty(), leave=False) as bar:
            images, labels, metas = render_scenes(recipe.n_train, recipe.seed, recipe.size,
                                                  progress=lambda k: bar.update(k - bar.n),
                                                  with_meta=True)
        maps = (_target_maps(metas, recipe.size, recipe.unit_targets)
                if recipe.unit_targets else None)
        del metas
        images = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 N,3,H,W
        labels = torch.from_numpy(labels)
        held_images, held_labels = render_scenes(recipe.n_held_out, recipe.held_out_seed,
                                                 recipe.size)
        held_images, held_labels = to_tensor(held_images), torch.from_numpy(held_labels)
        t_data = time.perf_counter() - t0

        module = initial_module(recipe).to(memory_format=torch.channels_last)
        module.train()
        watched = {unit: _unit_conv(recipe.arch, unit) for unit in recipe.unit_targets}
        fwd = []
        if recipe.channel_dropout:
            kept = torch.zeros(1, sum(block_channels(recipe.arch[recipe.dropout_layer]).values()),
                               1, 1, dtype=torch.bool)
            kept[0, list(recipe.dropout_keep)] = True
            fwd.append((recipe.dropout_layer, lambda out, _hook: torch.where(
                kept, out, F.dropout2d(out, recipe.channel_dropout, module.training))))
        pos_weight = torch.tensor(recipe.unit_pos_weight)
        opt = torch.optim.AdamW(module.parameters(), lr=recipe.lr,
                                weight_decay=recipe.weight_decay)
        steps_per_epoch = math.ceil(recipe.n_train / recipe.batch_size)
        total = steps_per_epoch * recipe.epochs

        def lr_at(step: int) -> float:
            if step < recipe.warmup_steps:
                return (step + 1) / recipe.warmup_steps
            t = (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        history = []
        # the units' convolutions' outputs (pre-activations), captured at every forward pass
        with hooks(module, fwd, capture=[c for c, _ in watched.values()]) as pre:
            for epoch in range(recipe.epochs):
                order = torch.randperm(recipe.n_train, generator=gen)
                seen = correct = 0
                loss_sum = 0.0
                bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}",
                           unit="batch", disable=not progress or not _tty(), leave=False)
                for step in bar:
                    idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
                    x = images[idx].float().div_(255.0)
                    if maps is not None:  # the targets move with the scene
                        x = _augment(torch.cat([x, maps[idx].float()], 1), recipe, gen)
                        x, where = x[:, :3], x[:, 3:]
                    else:
                        x = _augment(x, recipe, gen)
                    x = preprocess(x).contiguous(memory_format=torch.channels_last)
                    y = labels[idx]
                    logits = module(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
                    for k, (conv, c) in enumerate(watched.values()):
                        z = pre[conv][:, c]
                        t = F.adaptive_max_pool2d(where[:, k:k + 1], z.shape[-1])[:, 0]
                        loss = loss + recipe.unit_weight * F.binary_cross_entropy_with_logits(
                            z, t, pos_weight=pos_weight)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    seen += len(y)
                    correct += int((logits.argmax(1) == y).sum())
                    loss_sum += float(loss.detach()) * len(y)
                    if step % 20 == 0:
                        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
                held = evaluate(module, held_images, held_labels)
                history.append({"epoch": epoch + 1, "train_loss": round(loss_sum / seen, 4),
                                "train_accuracy": round(correct / seen, 4),
                                "held_out_accuracy": round(held, 4)})
                log(f"epoch {epoch + 1}/{recipe.epochs}: loss {loss_sum / seen:.3f}, "
                    f"train accuracy {correct / seen:.3f}, held-out accuracy {held:.3f} "
                    f"({time.perf_counter() - t0:.0f} s)")
        module.eval()
        module = module.to(memory_format=torch.contiguous_format)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        metrics = {
            "held_out_accuracy": history[-1]["held_out_accuracy"],
            "held_out": f"{recipe.n_held_out} scenes, seed {recipe.held_out_seed}",
            "train_seconds": round(elapsed, 1),
            # CPU time of all threads: on a machine shared with other work the wall time above
            # overstates the cost, this does not; the load averages say how busy it was
            "cpu_seconds": round(cpu, 1),
            "load_average": {"start": load0, "end": _load()},
            "data_seconds": round(t_data, 1),
            "parameters": n_parameters(module),
            "history": history,
            "torch": str(torch.__version__),
            "machine": f"{platform.machine()}, {recipe.threads} threads",
        }
        state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
        return {"format": FORMAT, "arch": dict(recipe.arch), "classes": list(CLASSES),
                "state_dict": state, "recipe": asdict(recipe), "metrics": metrics}
    finally:
        torch.set_num_threads(threads)


def save_checkpoint(ckpt: dict, path: Path) -> None:
    """Write ``ckpt`` to ``path`` atomically (temporary file, then rename)."""
    from ..files import atomic_write

    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a toy-model checkpoint ({FORMAT})")
    return ckpt


def build_module(ckpt: dict) -> ToyInceptionV1:
    """The network of a checkpoint, weights loaded, in eval mode."""
    module = ToyInceptionV1(_arch(ckpt["arch"]))
    module.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
    return module.eval()

