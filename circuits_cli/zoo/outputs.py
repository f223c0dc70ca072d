"""What a model returns, checked when it loads: the class logits, picked out of a tuple or dict.

A user's network may return a tensor, a tuple (``(logits, features)``) or a dict
(``{"logits": ..., "embedding": ...}``, Hugging Face's ``ModelOutput``). ``--output KEY|INDEX``
names the element that holds the logits; without it a tuple's element 0 or a dict's ``"logits"``
is taken when it is an (N, classes) tensor. A model without logits (a backbone) loads for what
needs none; the commands that need them refuse with one line listing what the model returns.
The chosen element is selected by a persistent hook on the root module
(:func:`circuits_cli.hooks.select_output`), so every forward pass of every command sees the
logits alone. ``--labels FILE`` gives the class names (one per line, or a JSON list), checked
against the number of logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CircuitsError
from ..hooks import select_output
from .base import LoadedModel


def _describe(out) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor {tuple(out.shape)}"
    if isinstance(out, dict):
        parts = [f"{k!r}: {_describe(v)}" for k, v in list(out.items())[:6]]
        return "a dict {" + ", ".join(parts) + "}"
    if isinstance(out, (tuple, list)):
        parts = [f"{i}: {_describe(v)}" for i, v in enumerate(out[:6])]
        return f"a {type(out).__name__} of {len(out)} ({', '.join(parts)})"
    return f"a {type(out).__name__}"


def _key(out, key: str | None) -> tuple[int | str | None, str]:
    """(key to select, in words) for the model's raw output ``out``; None keeps ``out``."""
    what = _describe(out)
    if isinstance(out, torch.Tensor):
        if key is not None:
            raise CircuitsError(f"--output {key} was given, but the model returns one tensor "
                                f"{tuple(out.shape)}; leave --output out")
        return None, "the model's output"
    if isinstance(out, dict):
        if key is None:
            if "logits" not in out:
                raise CircuitsError(f"the model returns {what}; name the logits with --output "
                                    "KEY")
            key = "logits"
        if key not in out:
            raise CircuitsError(f"--output {key!r} is not a key of the model's output, which is "
                                f"{what}")
        return key, f"output[{key!r}]"
    if isinstance(out, (tuple, list)):
        fields = getattr(out, "_fields", ())
        if key is None:
            key = "0"
        if key in fields:
            index = list(fields).index(key)
        elif key.lstrip("-").isdigit() and -len(out) <= int(key) < len(out):
            index = int(key)
        else:
            raise CircuitsError(f"--output {key} is not an index of the model's output, which is "
                                f"{what}; give an INDEX from 0 to {len(out) - 1}")
        return index, f"output[{index}] of a {type(out).__name__} of {len(out)}"
    raise CircuitsError(f"the model returns {what}, not logits; make FACTORY return a module whose "
                        "output is an (N, classes) tensor, a tuple or a dict holding one")


def check_output(model: LoadedModel, key: str | None = None) -> None:
    """Check what ``model`` returns and pick its (N, classes) logits with ``key`` (``--output``)
    out of a tuple or dict; sets ``model.output``. A wrong ``key`` is an error (one line naming
    what the model returns). A model whose output holds no logits (a backbone returning feature
    maps) still loads, with ``model.no_logits`` saying why: what needs no logits (layers,
    visualize, examples, weights, trace) works, and what does (classify, find, steer) refuses
    with that line."""
    side = model.input_size
    p = next(model.module.parameters(), None)
    x = torch.full((1, 3, side, side), 0.5, dtype=p.dtype if p is not None else torch.float32,
                   device=model.device)
    with torch.no_grad():
        out = model.module(model.preprocess(x))
    try:
        index, words = _key(out, key)
    except CircuitsError as err:
        if key is not None:
            raise
        model.no_logits = str(err)
        return
    chosen = out if index is None else out[index]
    if not isinstance(chosen, torch.Tensor) or chosen.dim() != 2:
        shown = _describe(chosen)
        hint = f" (the model returns {_describe(out)}: choose the element that holds the " \
            "logits with --output KEY|INDEX)" if index is not None else \
            " (a classifier returns (N, classes); --output KEY|INDEX picks them out of a " \
            "tuple or dict)"
        reason = f"{words} is {shown}, not (N, classes) logits{hint}"
        if key is not None:
            raise CircuitsError(reason)
        model.no_logits = reason
        return
    if index is not None:
        select_output(model.module, index)
        model.output = words
    model.memo["zoo.n_classes"] = int(chosen.shape[1])


def read_labels(path: Path, n_classes: int) -> list[str]:
    """Class names from ``path``: one per line (``.txt``), or a JSON list or ``{index: name}``
    object; exactly one per logit."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CircuitsError(f"labels file {str(path)!r} does not exist; give a text file with one "
                            "class name per line")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CircuitsError(f"cannot read labels file {str(path)!r} ({err})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise CircuitsError(f"labels file {str(path)!r} is not valid JSON ({err})") from None
        if isinstance(data, dict):
            try:
                data = [data[k] for k in sorted(data, key=int)]
            except (ValueError, TypeError):
                raise CircuitsError(f"labels file {str(path)!r}: a JSON object must map class "
                                    "indices to names") from None
        if not isinstance(data, list):
            raise CircuitsError(f"labels file {str(path)!r} must hold a JSON list of names")
        labels = [str(x) for x in data]
    else:
        labels = [line.strip() for line in text.splitlines()]
        while labels and not labels[-1]:
            labels.pop()
    if len(labels) != n_classes:
        raise CircuitsError(f"labels file {str(path)!r} has {len(labels)} names, but the model "
                            f"has {n_classes} classes; give one name per class, in output order")
    return labels
