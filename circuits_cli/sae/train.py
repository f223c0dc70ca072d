"""Training a sparse autoencoder on a conv layer's activations: streamed, bounded, resumable.

Samples: every spatial position of every training image is one sample, the layer's channel
vector there (Gorton 2024 trained InceptionV1 SAEs the same way). They are read from the
activation store (``(N, C, H, W)`` float16, memory-mapped) a *chunk* of images at a time: each
epoch visits the images in a seeded random order, ``chunk`` images at once, and shuffles the
positions of a chunk before cutting it into batches. Memory is one chunk (about 65k samples), not
the data set; batch ``t`` is a pure function of ``(seed, t)``, which is what makes a resumed run
identical to an uninterrupted one.

Input normalisation: activations are multiplied by one scale ``s`` so that the mean squared norm
of a sample is ``d_in`` (estimated on the first chunk; SAELens's ``expected_average_only_in``),
then folded back into the saved weights (:meth:`~circuits_cli.sae.model.SAE.fold_scale`).

TopK (default; Gao et al. 2024): decoder rows initialised at random unit vectors, the encoder as
their transpose, ``b_dec`` at the mean sample; loss = ‖x − x̂‖² + ``aux_coeff`` · AuxK, where AuxK
reconstructs the residual ``x − x̂`` from the ``aux_k`` largest pre-activations of the *dead*
latents (no activation in the last ``dead_window`` samples), giving them a gradient again.
ReLU: loss = ‖x − x̂‖² + ``l1`` · Σ f_i (decoder rows are unit norm, so this is Bricken et al.'s
``Σ f_i ‖W_dec,i‖``). In both, the decoder gradient parallel to each row is removed and rows are
renormalised after every step. Adam; learning rate constant, then linearly to zero over the last
20% of the steps.

Checkpoints (``checkpoint.pt``: weights, optimiser, dead-latent counters, step, history) are
written every ``checkpoint_every`` steps and when the run is interrupted (Ctrl-C is deferred to the
end of the current step, so a checkpoint is always a finished step).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CircuitsError
from .model import SAE

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (and so the checkpoint's identity)."""

    arch: str = "topk"
    expansion: int = 8           # d_sae = expansion * d_in
    k: int = 32                  # TopK: active latents per sample
    l1: float = 2.0              # ReLU: L1 coefficient (inputs normalised to ‖x‖² = d_in)
    steps: int = 600
    batch_size: int = 1024
    lr: float = 1e-3
    aux_k: int | None = None     # TopK: latents in the AuxK reconstruction (default d_in // 2)
    aux_coeff: float = 1 / 32    # Gao et al.'s alpha
    dead_window: int = 50_000    # samples without activation after which a latent is dead
    chunk_samples: int = 65_536  # samples held in memory at once
    seed: int = 0

    def check(self) -> None:
        if self.arch not in ("topk", "relu"):
            raise CircuitsError(f"unknown SAE architecture {self.arch!r}; choose topk or relu")
        for name in ("expansion", "k", "steps", "batch_size", "dead_window", "chunk_samples"):
            if getattr(self, name) < 1:
                raise CircuitsError(f"--{name.replace('_', '-')} must be at least 1, got "
                                    f"{getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise CircuitsError(f"--lr must be a finite positive number, got {self.lr}")
        if not (math.isfinite(self.l1) and self.l1 >= 0 and math.isfinite(self.aux_coeff)
                and self.aux_coeff >= 0):
            raise CircuitsError(f"--l1 must be a finite number >= 0, got {self.l1}")

    def memory_bytes(self, d_in: int) -> int:
        """About how much memory training takes with ``d_in`` channels: the weights with their
        gradients and Adam's two moments (4 copies of W_enc and W_dec), and a batch's latents
        (pre-activations, the dense decode, their gradients: 4 x batch x d_sae floats)."""
        d_sae = self.expansion * d_in
        weights = 4 * (2 * d_in * d_sae + d_sae + d_in)
        batch = 4 * self.batch_size * d_sae + 4 * self.batch_size * d_in
        return 4 * (weights + batch)

    def check_memory(self, d_in: int, available: int | None = None) -> None:
        """Refuse (one line, before any work) a training that needs more memory than this
        machine has free: an enormous --expansion or --batch-size was killed by the kernel after
        minutes."""
        available = available_memory() if available is None else available
        need = self.memory_bytes(d_in)
        if available is not None and need > available:
            raise CircuitsError(
                f"training an SAE of {self.expansion * d_in:,} latents ({self.expansion} x "
                f"{d_in} channels) on batches of {self.batch_size:,} positions needs about "
                f"{need / 2**30:,.1f} GiB of memory; {available / 2**30:,.1f} GiB is free: lower "
                "--expansion or --batch-size")

    def key(self, data_id: str) -> str:
        text = json.dumps({"cfg": asdict(self), "data": data_id}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation (Linux ``MemAvailable``, else physical memory),
    or None when the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


# ------------------------------------------------------------------------------------ data


class PositionStream:
    """Batches of positions of ``maps`` (``(N, C, H, W)`` array, memory-mapped or not), rows
    ``rows`` only, in a seeded order that depends only on the batch index."""

    def __init__(self, maps, rows: np.ndarray, batch_size: int, seed: int,
                 chunk_samples: int = 65_536):
        self.maps = maps
        self.rows = np.asarray(rows, dtype=np.int64)
        if len(self.rows) == 0:
            raise CircuitsError("no training images left after the held-out split; use more "
                                "images or a smaller --holdout")
        _, self.d_in, h, w = maps.shape
        self.hw = h * w
        self.batch_size = batch_size
        self.seed = seed
        self.chunk_rows = max(1, min(len(self.rows), chunk_samples // self.hw))
        self.per_epoch = len(self.rows) * self.hw
        self._cache: tuple[tuple[int, int], torch.Tensor] | None = None

    def _chunk(self, epoch: int, c: int) -> torch.Tensor:
        """Chunk ``c`` of ``epoch``: ``(rows * H * W, C)`` float32, positions shuffled."""
        if self._cache is not None and self._cache[0] == (epoch, c):
            return self._cache[1]
        order = np.random.default_rng([self.seed, epoch]).permutation(self.rows)
        rows = np.sort(order[c * self.chunk_rows:(c + 1) * self.chunk_rows])
        block = torch.from_numpy(np.asarray(self.maps[rows], dtype=np.float32))
        x = block.flatten(2).transpose(1, 2).reshape(-1, self.d_in)
        perm = np.random.default_rng([self.seed, epoch, c, 1]).permutation(len(x))
        x = x[torch.from_numpy(perm)].contiguous()
        self._cache = ((epoch, c), x)
        return x

    def samples(self, start: int, stop: int) -> torch.Tensor:
        """Samples ``start:stop`` of the endless stream (epoch after epoch)."""
        pieces = []
        chunk_len = self.chunk_rows * self.hw
        while start < stop:
            epoch, within = divmod(start, self.per_epoch)
            c, offset = divmod(within, chunk_len)
            x = self._chunk(epoch, c)
            take = min(stop - start, len(x) - offset)
            pieces.append(x[offset:offset + take])
            start += take
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def batch(self, step: int) -> torch.Tensor:
        return self.samples(step * self.batch_size, (step + 1) * self.batch_size)


# --------------------------------------------------------------------------------- training


@dataclass
class TrainState:
    sae: SAE                       # in normalised space while training
    optimizer: torch.optim.Optimizer
    since_fired: torch.Tensor      # (d_sae,) samples since each latent last fired
    scale: float
    step: int = 0
    history: list | None = None    # [{"step", "loss", "fvu", "l0", "dead"}], every few steps


def _new_state(cfg: TrainConfig, stream: PositionStream) -> TrainState:
    d_in = stream.d_in
    gen = torch.Generator().manual_seed(cfg.seed)
    sample = stream.samples(0, min(stream.per_epoch, cfg.chunk_samples))
    ms = float(sample.pow(2).sum(1).mean())
    if not ms > 0:
        raise CircuitsError("the layer's activations are all zero on these images; an SAE has "
                            "nothing to learn")
    scale = math.sqrt(d_in / ms)
    sae = SAE(d_in, cfg.expansion * d_in, cfg.arch, min(cfg.k, cfg.expansion * d_in)
              if cfg.arch == "topk" else None).init_weights(gen)
    with torch.no_grad():
        sae.b_dec.copy_((sample * scale).mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    return TrainState(sae, opt, torch.zeros(sae.d_sae, dtype=torch.long), scale, 0, [])


def _lr(cfg: TrainConfig, step: int) -> float:
    decay_start = int(cfg.steps * 0.8)
    if step < decay_start:
        return cfg.lr
    return cfg.lr * (cfg.steps - step) / max(1, cfg.steps - decay_start)


class _SparseDecode(torch.autograd.Function):
    """``x̂ = Σ_j vals[:, j] · W_dec[idx[:, j]]``, forward and backward on the k active
    latents of each sample only.

    The textbook TopK loop scatters the k values into a dense ``(batch, d_sae)`` matrix and
    multiplies: three ``batch x d_sae x d_in`` products per step (the forward, the gradient of
    the dense matrix, the gradient of ``W_dec``), all but ``k / d_sae`` of it multiplying zeros.
    That was the gap to a plain loop, and more: on 4c's shape (batch 1024, 4096 latents, 512
    channels, k=32, 2 threads) each product takes 180-300 ms, while ``embedding_bag`` (forward),
    ``sampled_addmm`` (the gradient of the values: ``grad · W_decᵀ`` at the k active entries only)
    and a sparse ``(d_sae, batch) @ (batch, d_in)`` product (the gradient of ``W_dec``) take
    20-40 ms each. (``embedding_bag``'s own backward sorts the indices serially; it is not used.)
    """

    @staticmethod
    def forward(ctx, vals, idx, W_dec):
        ctx.save_for_backward(vals, idx, W_dec)
        return F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")

    @staticmethod
    def backward(ctx, grad):
        vals, idx, W_dec = ctx.saved_tensors
        b, k = idx.shape
        d_sae = W_dec.shape[0]
        grad = grad.contiguous()
        g_vals = g_w = None
        if ctx.needs_input_grad[0]:
            sidx, order = idx.sort(dim=1)  # CSR wants sorted columns within a row
            crow = torch.arange(0, b * k + 1, k, device=idx.device)
            with warnings.catch_warnings():  # "sparse CSR support is in beta": not the user's
                warnings.simplefilter("ignore", UserWarning)
                mask = torch.sparse_csr_tensor(crow, sidx.reshape(-1), vals.new_zeros(b * k),
                                               (b, d_sae))
                picked = torch.sparse.sampled_addmm(mask, grad, W_dec.t(), beta=0.0).values()
            g_vals = torch.empty_like(vals).scatter_(1, order, picked.reshape(b, k))
        if ctx.needs_input_grad[2]:
            rows = torch.arange(b, device=idx.device).repeat_interleave(k)
            m = torch.sparse_coo_tensor(torch.stack([idx.reshape(-1), rows]), vals.reshape(-1),
                                        (d_sae, b))
            g_w = torch.sparse.mm(m, grad)
        return g_vals, None, g_w


def _decode_sparse(vals: torch.Tensor, idx: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Σ_j vals[:, j] · W_dec[idx[:, j]]: the decoder on the k active latents."""
    return _SparseDecode.apply(vals, idx, W_dec)


def loss_terms(sae: SAE, x: torch.Tensor, cfg: TrainConfig, dead: torch.Tensor | None
               ) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """(loss, {"mse", "aux"/"l1"}, fired (d_sae,) bool) of one batch of normalised samples."""
    pre = sae.pre_acts(x)
    if sae.arch == "topk":
        vals, idx = pre.topk(sae.k, dim=-1)
        vals = torch.relu(vals)
        x_hat = _decode_sparse(vals, idx, sae.W_dec) + sae.b_dec
        active = vals > 0
        fired = torch.zeros(sae.d_sae, dtype=torch.bool)
        fired[idx[active]] = True
    else:
        f = torch.relu(pre)
        x_hat = f @ sae.W_dec + sae.b_dec
        active = f > 0
        fired = active.any(0)
    err = x - x_hat
    mse = err.pow(2).sum(1).mean()  # squared error per sample (SAELens's convention)
    terms = {"mse": mse, "l0": active.detach().sum(1).float().mean()}
    loss = mse
    if sae.arch == "topk":
        aux = torch.zeros(())
        n_dead = int(dead.sum()) if dead is not None else 0
        if n_dead and cfg.aux_coeff > 0:
            k_aux = min(cfg.aux_k or max(1, sae.d_in // 2), n_dead)
            dead_ids = dead.nonzero().squeeze(1)
            a_vals, a_idx = pre[:, dead_ids].topk(k_aux, dim=-1)
            e_hat = _decode_sparse(torch.relu(a_vals), dead_ids[a_idx], sae.W_dec)
            e = err.detach()
            aux = (e - e_hat).pow(2).sum(1).mean() / e.pow(2).sum(1).mean().clamp_min(1e-12)
            loss = loss + cfg.aux_coeff * aux
        terms["aux"] = aux
    else:
        l1 = f.sum(1).mean()
        terms["l1"] = l1
        loss = loss + cfg.l1 * l1
    return loss, terms, fired


def _train_step(state: TrainState, x: torch.Tensor, cfg: TrainConfig) -> dict:
    sae = state.sae
    for group in state.optimizer.param_groups:
        group["lr"] = _lr(cfg, state.step)
    dead = state.since_fired >= cfg.dead_window
    loss, terms, fired = loss_terms(sae, x, cfg, dead)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():  # keep rows on the unit sphere: drop the radial part of the gradient
        g = sae.W_dec.grad
        g.sub_((g * sae.W_dec).sum(1, keepdim=True) * sae.W_dec)
    state.optimizer.step()
    sae.normalize_decoder()
    state.since_fired += len(x)
    state.since_fired[fired] = 0
    state.step += 1
    with torch.no_grad():
        var = (x - x.mean(0)).pow(2).sum()
        fvu = float(terms["mse"]) * len(x) / float(var.clamp_min(1e-12))
    return {"step": state.step, "loss": float(loss.detach()), "fvu": fvu, "l0": float(terms["l0"]),
            "dead": float(dead.float().mean())}


def _save_checkpoint(path: Path, state: TrainState, key: str) -> None:
    from ..files import atomic_write

    blob = {"key": key, "step": state.step, "sae": state.sae.state(),
            "optimizer": state.optimizer.state_dict(), "since_fired": state.since_fired,
            "scale": state.scale, "history": state.history}
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def _load_checkpoint(path: Path, key: str, cfg: TrainConfig, stream: PositionStream
                     ) -> TrainState | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is started over, not trusted
        return None
    if blob.get("key") != key:
        return None
    d_in, d_sae = blob["sae"]["W_enc"].shape
    sae = SAE(d_in, d_sae, cfg.arch, cfg.k if cfg.arch == "topk" else None)
    with torch.no_grad():
        for name, value in blob["sae"].items():
            getattr(sae, name).copy_(value)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    opt.load_state_dict(blob["optimizer"])
    return TrainState(sae, opt, blob["since_fired"], float(blob["scale"]), int(blob["step"]),
                      list(blob["history"]))


class _DeferredInterrupt:
    """Ctrl-C during a step is held until the step is done (a second Ctrl-C is immediate)."""

    def __init__(self):
        self.hit = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                if self.hit:
                    raise KeyboardInterrupt
                self.hit = True

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


class Progress:
    """A tqdm bar on a terminal; plain ``step N/M ...`` lines every ``every_s`` seconds (and at
    the end) otherwise. ``log`` receives the lines (default: stderr); ``None`` is silent."""

    def __init__(self, total: int, start: int, log: Callable[[str], None] | None = None,
                 bar: bool | None = None, every_s: float = 15.0):
        self.total, self.log, self.every_s = total, log, every_s
        self.last = time.monotonic()
        self.bar = None
        if log is not None and (bar if bar is not None else sys.stderr.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="sae train", unit="step",
                            leave=False)

    @staticmethod
    def text(m: dict) -> str:
        return (f"loss {m['loss']:.4f}  1-FVU {1 - m['fvu']:.3f}  L0 {m['l0']:.1f}  "
                f"dead {100 * m['dead']:.1f}%")

    def update(self, m: dict) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(self.text(m), refresh=False)
        elif self.log is not None and (time.monotonic() - self.last >= self.every_s
                                       or m["step"] == self.total):
            self.last = time.monotonic()
            self.log(f"step {m['step']}/{self.total}  {self.text(m)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(maps, rows: np.ndarray, cfg: TrainConfig, *, checkpoint: Path | None = None,
          data_id: str = "", checkpoint_every: int = 50, log: Callable[[str], None] | None = None,
          bar: bool | None = None, callback: Callable[[dict], None] | None = None,
          threads: int | None = None) -> tuple[SAE, dict]:
    """Train an SAE on the positions of ``maps[rows]`` (``maps``: ``(N, C, H, W)``).

    With ``checkpoint`` (a file path), a run resumes from it when it belongs to the same config
    and data (``data_id``), saves it every ``checkpoint_every`` steps and on Ctrl-C. Returns the
    SAE *in raw activation units* (scale folded in) and ``{"scale", "history", "steps",
    "resumed_from", "seconds", "samples_per_s"}``. ``callback(metrics)`` runs after each step.
    """
    cfg.check()
    stream = PositionStream(maps, rows, cfg.batch_size, cfg.seed, cfg.chunk_samples)
    key = cfg.key(data_id)
    state = None
    if checkpoint is not None and Path(checkpoint).is_file():
        state = _load_checkpoint(Path(checkpoint), key, cfg, stream)
        if state is None:
            raise CircuitsError(f"{str(checkpoint)!r} is a checkpoint of a different training "
                                "run (other options or images); remove it or train into "
                                "another --out folder")
    resumed_from = state.step if state is not None else 0
    if state is None:
        state = _new_state(cfg, stream)
    if log is not None and resumed_from:
        log(f"resuming from step {resumed_from}/{cfg.steps} ({checkpoint})")
    progress = Progress(cfg.steps, state.step, log, bar)
    started = time.perf_counter()
    in_step = False
    try:
        with _DeferredInterrupt() as interrupt, torch_threads(threads):
            while state.step < cfg.steps:
                in_step = True
                x = stream.batch(state.step) * state.scale
                m = _train_step(state, x, cfg)
                in_step = False
                if not math.isfinite(m["loss"]):  # diverged: nothing of it is saved
                    _diverged(state, cfg, f"the loss is {m['loss']}")
                if state.step % 10 == 0 or state.step == cfg.steps:
                    state.history.append(m)
                progress.update(m)
                if callback is not None:
                    callback(m)
                if checkpoint is not None and (interrupt.hit
                                               or state.step % checkpoint_every == 0):
                    if not _finite(state.sae):
                        _diverged(state, cfg, "the weights are not finite")
                    _save_checkpoint(Path(checkpoint), state, key)
                if interrupt.hit:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        # a step cut in the middle may have half-updated weights: keep the last checkpoint
        if (checkpoint is not None and not in_step and state.step > resumed_from
                and _finite(state.sae)):
            _save_checkpoint(Path(checkpoint), state, key)
        raise
    finally:
        progress.close()
    if not _finite(state.sae):
        _diverged(state, cfg, "the weights are not finite")
    seconds = time.perf_counter() - started
    done = state.step - resumed_from
    sae = state.sae
    sae.fold_scale(state.scale)
    sae.eval()
    for p in sae.parameters():
        p.requires_grad_(False)
    return sae, {"scale": state.scale, "history": state.history, "steps": state.step,
                 "resumed_from": resumed_from, "seconds": seconds,
                 "samples_per_s": done * cfg.batch_size / seconds if seconds > 0 else None}


def _finite(sae: SAE) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in sae.parameters())


def _diverged(state: TrainState, cfg: TrainConfig, why: str):
    raise CircuitsError(f"training diverged at step {state.step}/{cfg.steps} ({why}); nothing of "
                        f"it was saved: lower --lr (it is {cfg.lr:g})")


@contextlib.contextmanager
def torch_threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
