"""The toy models of "Toy Models of Superposition" (Elhage et al., 2022), many trained at once.

Each *instance* is an independent model with its own weights ``W`` (``m × n``: ``n`` features
squeezed into ``m`` hidden dimensions) and bias ``b`` (``n``):

- ReLU output model: ``h = W x``, ``x' = ReLU(Wᵀ h + b)``
- linear model: ``x' = Wᵀ W x + b`` (for contrast: it never uses superposition)

Synthetic data: every feature is 0 with probability ``S`` (the sparsity) and otherwise uniform in
``[0, 1]``, independently. The loss is the importance-weighted squared error
``Σ_i I_i (x_i − x'_i)²``, averaged over the batch. As in the paper's code, all instances are
trained in one batched loop (``W`` has shape ``[instances, m, n]``), so a sweep over sparsity or
importance is one run. An instance only ever sees its own gradient, so batching changes nothing
but speed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import CircuitsError


def sparse_features(density: torch.Tensor, batch: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """A batch ``[instances, batch, n]`` of synthetic features: feature ``i`` of instance ``k`` is
    present with probability ``density[k, i]`` (= 1 − S) and then uniform in ``[0, 1]``."""
    n_inst, n = density.shape
    # One uniform draw u per entry: the feature is present when u < p, and then u / p is
    # uniform in [0, 1] (half the random numbers of drawing presence and value apart).
    u = torch.rand((n_inst, batch, n), generator=generator)
    p = density[:, None, :]
    return torch.where(u < p, u / p, torch.zeros((), dtype=u.dtype))


class ToyModel(torch.nn.Module):
    """``instances`` independent toy models: ``W [instances, m, n]``, ``b [instances, n]``.

    ``relu``: one flag for all, or one per instance (ReLU output and linear models side by side
    in one run). ``W`` starts Xavier-normal (as in the paper's code), ``b`` at zero."""

    def __init__(self, n_instances: int, n_features: int, n_hidden: int, relu=True,
                 generator: torch.Generator | None = None):
        super().__init__()
        std = math.sqrt(2.0 / (n_features + n_hidden))
        w = torch.randn((n_instances, n_hidden, n_features), generator=generator) * std
        self.W = torch.nn.Parameter(w)
        self.b = torch.nn.Parameter(torch.zeros(n_instances, n_features))
        flags = np.broadcast_to(np.asarray(relu, dtype=bool), (n_instances,)).copy()
        flags = torch.from_numpy(flags)
        self.register_buffer("relu_mask", flags.clone())
        self._all_relu, self._no_relu = bool(flags.all()), not bool(flags.any())

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """``h = W x`` for ``x [instances, batch, n]`` -> ``[instances, batch, m]``."""
        return torch.bmm(x, self.W.transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.baddbmm(self.b[:, None, :], self.hidden(x), self.W)
        if self._all_relu:
            return torch.relu(out)
        if self._no_relu:
            return out
        return torch.where(self.relu_mask[:, None, None], torch.relu(out), out)


def importance_weighted_loss(x: torch.Tensor, out: torch.Tensor,
                             importance: torch.Tensor) -> torch.Tensor:
    """Per instance: ``mean over the batch of Σ_i I_i (x_i − x'_i)²`` -> ``[instances]``."""
    return ((x - out) ** 2 * importance[:, None, :]).sum(-1).mean(-1)


@dataclass
class ToyRun:
    """The result of training a batch of toy models (numpy arrays, instance first)."""

    W: np.ndarray            # [instances, m, n]
    b: np.ndarray            # [instances, n]
    density: np.ndarray      # [instances, n]   (1 − S per feature)
    importance: np.ndarray   # [instances, n]
    relu: np.ndarray         # [instances] bool: ReLU output model (True) or linear (False)
    loss: np.ndarray         # [instances], on a fresh evaluation batch
    steps: int
    batch: int
    lr: float
    seed: int
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def n_instances(self) -> int:
        return self.W.shape[0]

    def select(self, index) -> ToyRun:
        """The instances ``index`` (a slice, mask or index array) as a run of their own."""
        return ToyRun(W=self.W[index], b=self.b[index], density=self.density[index],
                      importance=self.importance[index], relu=self.relu[index],
                      loss=self.loss[index], steps=self.steps, batch=self.batch, lr=self.lr,
                      seed=self.seed, seconds=self.seconds, extra=dict(self.extra))

    def to_json(self) -> dict:
        return {
            "W": self.W.tolist(), "b": self.b.tolist(), "density": self.density.tolist(),
            "importance": self.importance.tolist(), "relu": self.relu.tolist(),
            "loss": self.loss.tolist(), "steps": self.steps, "batch": self.batch, "lr": self.lr,
            "seed": self.seed, "seconds": self.seconds, "extra": self.extra,
        }

    @classmethod
    def from_json(cls, d: dict) -> ToyRun:
        arr = lambda k: np.asarray(d[k], dtype=np.float64)  # noqa: E731
        return cls(W=arr("W"), b=arr("b"), density=arr("density"), importance=arr("importance"),
                   relu=np.asarray(d["relu"], dtype=bool), loss=arr("loss"), steps=int(d["steps"]),
                   batch=int(d["batch"]), lr=float(d["lr"]), seed=int(d["seed"]),
                   seconds=float(d["seconds"]), extra=dict(d.get("extra", {})))


def _per_instance(value, n_instances: int, n_features: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(value, dtype=np.float32))
    if t.ndim == 0:
        t = t.expand(n_instances, n_features)
    elif t.ndim == 1 and t.shape[0] == n_instances and n_instances != n_features:
        t = t[:, None].expand(n_instances, n_features)
    elif t.ndim == 1 and t.shape[0] == n_features:
        t = t[None, :].expand(n_instances, n_features)
    elif t.ndim == 1 and t.shape[0] == n_instances:
        raise CircuitsError(f"{what}: a vector of length {t.shape[0]} is ambiguous when instances "
                            "= features; pass an [instances, features] array")
    if tuple(t.shape) != (n_instances, n_features):
        raise CircuitsError(f"{what} has shape {tuple(t.shape)}; expected a number, "
                            f"[{n_instances}] (per instance), [{n_features}] (per feature) or "
                            f"[{n_instances}, {n_features}]")
    return t.contiguous().float()


def train_toy_models(n_features: int, n_hidden: int, density, importance=1.0, *,
                     n_instances: int | None = None, relu=True, steps: int = 10_000,
                     batch: int = 1024, lr: float = 1e-3, seed: int = 0,
                     eval_batch: int = 8192, decay: bool = False, weight_decay: float = 0.0,
                     log: Callable[[str], None] | None = None) -> ToyRun:
    """Train a batch of toy models, one per row of ``density`` / ``importance``.

    ``density`` (1 − S) and ``importance`` are a number, a per-instance vector, a per-feature
    vector or an ``[instances, n]`` array; ``relu`` a flag or one per instance. Adam at a constant
    learning rate, as in the paper's code (10,000 steps of 1,024 there). The paper's loss has no
    regulariser, so weight decay is off by default (its code's AdamW default of 0.01 stored the
    same number of features at every sparsity of the n=20, m=5 sweep in our measurement);
    ``decay=True`` lowers the rate along a half cosine to 0 instead (sharper optima in fewer
    steps). Seeded: the same arguments give the same weights on the same machine and thread
    count. ``loss`` in the result
    is measured on a fresh batch of ``eval_batch``.
    """
    if n_features < 1 or n_hidden < 1:
        raise CircuitsError("n_features and n_hidden must be at least 1")
    if steps < 1 or batch < 1:
        raise CircuitsError("steps and batch must be at least 1")
    if n_instances is None:
        shapes = [np.shape(v) for v in (density, importance)]
        rows = [s[0] for s in shapes if len(s) == 2] + [
            s[0] for s in shapes if len(s) == 1 and s[0] != n_features]
        n_instances = rows[0] if rows else 1
    dens = _per_instance(density, n_instances, n_features, "density")
    imp = _per_instance(importance, n_instances, n_features, "importance")
    if not bool(((dens > 0) & (dens <= 1)).all()):
        raise CircuitsError("feature density 1 − S must be in (0, 1]")
    gen = torch.Generator().manual_seed(seed)
    model = ToyModel(n_instances, n_features, n_hidden, relu=relu, generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    start = time.perf_counter()
    report_every = max(1, steps // 10)
    for step in range(steps):
        if decay:
            for group in opt.param_groups:
                group["lr"] = lr * math.cos(0.5 * math.pi * step / steps)
        x = sparse_features(dens, batch, gen)
        loss = importance_weighted_loss(x, model(x), imp)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        if log is not None and ((step + 1) % report_every == 0 or step + 1 == steps):
            log(f"step {step + 1}/{steps}: mean loss {loss.mean().item():.5f}")
    seconds = time.perf_counter() - start
    with torch.no_grad():
        x = sparse_features(dens, eval_batch, gen)
        final = importance_weighted_loss(x, model(x), imp)
    return ToyRun(W=model.W.detach().double().numpy(), b=model.b.detach().double().numpy(),
                  density=dens.double().numpy(), importance=imp.double().numpy(),
                  relu=model.relu_mask.numpy().copy(),
                  loss=final.double().numpy(), steps=steps, batch=batch, lr=lr, seed=seed,
                  seconds=seconds)


def expected_loss(W: np.ndarray, b: np.ndarray, density: np.ndarray, importance: np.ndarray,
                  relu=True, grid: int = 64) -> np.ndarray:
    """The exact expected loss of small models (``n ≤ 3``), without sampling noise: a sum over the
    ``2ⁿ`` patterns of present features, each weighted by its probability, of the mean loss on a
    midpoint grid of ``grid`` values per present feature (the uniform [0, 1] integral).

    Used to pick the best of several restarts where rare events make a sampled loss too noisy
    (at density 0.01 both of two features are present once in 10,000 samples).
    ``W [I, m, n]``, ``b``, ``density``, ``importance`` ``[I, n]`` -> ``[I]``.
    """
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    p, imp = np.asarray(density, np.float64), np.asarray(importance, np.float64)
    n = W.shape[-1]
    if n > 3:
        raise ValueError("expected_loss enumerates patterns; use it for n <= 3")
    values = (np.arange(grid) + 0.5) / grid
    total = np.zeros(W.shape[0])
    for pattern in range(2 ** n):
        on = [(pattern >> i) & 1 == 1 for i in range(n)]
        prob = np.prod([p[:, i] if on[i] else 1 - p[:, i] for i in range(n)], axis=0)
        axes = [values if on[i] else np.zeros(1) for i in range(n)]
        x = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, n)       # [P, n]
        out = np.einsum("pn,imn,imk->ipk", x, W, W) + b[:, None, :]
        relu_mask = np.broadcast_to(np.asarray(relu, dtype=bool), (W.shape[0],))
        out = np.where(relu_mask[:, None, None], np.maximum(out, 0), out)
        err = ((x[None] - out) ** 2 * imp[:, None, :]).sum(-1).mean(-1)
        total += prob * err
    return total
