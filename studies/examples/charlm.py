"""A character-level language model on Python's own source code: a user-style task for ``task.entrypoint``.

The text is the source of a few standard-library modules (``argparse``, ``inspect``, ``typing``): it ships with
every Python, so the task needs no download and is the same on every run of one Python version. A tiny causal
transformer reads ``context`` characters and predicts the next character at every position.

beta2 is searched together with lr because the best beta2 depends on lr. At this small scale the effect is
modest: with Adam at lr 1e-2 to 3e-2, beta2 0.99-0.999 ends 1-2% lower in validation loss than 0.9 after 4
epochs, while near the edge of stability (lr 6e-2) the order flipped in our runs (0.9 beat 0.99).

Used from a study file (the module is found next to the study file, wherever ``lrsearch`` is run from)::

    task: {entrypoint: "charlm:make", args: {context: 32, n_chars: 120000}}

Example:
    >>> task = make(context=16, n_chars=20_000)
    >>> x, y = task.train[0]
    >>> tuple(x.shape), tuple(y.shape)
    ((16,), (16,))
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import TYPE_CHECKING

import lrsearch

if TYPE_CHECKING:
    from torch import Tensor, nn

VOCAB = 128
"""Characters are ASCII codes; the rare non-ASCII character becomes ``?``, so the vocabulary never depends on
the text."""
SOURCES = ("argparse", "inspect", "typing")
BLOCK = 16
"""Windows per train/validation block (512 characters at context 32)."""


def corpus(n_chars: int = 200_000, modules: tuple[str, ...] | list[str] = SOURCES) -> str:
    """The first ``n_chars`` characters of the named standard-library modules' source, concatenated.

    Example:
        >>> corpus(5, ["argparse"])[:5] == inspect.getsource(importlib.import_module("argparse"))[:5]
        True
    """
    text = "\n".join(inspect.getsource(importlib.import_module(name)) for name in modules)
    if len(text) < n_chars:
        raise lrsearch.TaskError(f"charlm: n_chars {n_chars} is more than the {len(text)} characters of "
                                 f"{', '.join(modules)} (allowed: up to {len(text)}, or name more modules)")
    return text[:n_chars]


def make(
    context: int = 32,
    n_chars: int = 200_000,
    d_model: int = 64,
    heads: int = 4,
    layers: int = 1,
    val_fraction: float = 0.1,
    modules: tuple[str, ...] | list[str] = SOURCES,
) -> lrsearch.Task:
    """The character-LM task: windows of ``context`` characters, each target the window shifted by one.

    Windows do not overlap. About ``val_fraction`` of them, in blocks of 16 consecutive windows spread over the
    whole text, are the validation set. Metrics: ``val_accuracy`` (next-character top-1) and
    ``val_bits_per_char`` (the loss in bits).

    Example:
        >>> task = make(context=32, n_chars=50_000)
        >>> len(task.train), len(task.val)
        (1418, 144)
    """
    import torch
    from torch.utils.data import TensorDataset

    if context < 2:
        raise lrsearch.TaskError(f"charlm: context {context} is too short (allowed: 2 or more characters)")
    if not 0 < val_fraction < 1:
        raise lrsearch.TaskError(f"charlm: val_fraction {val_fraction} must be in (0, 1)")
    text = corpus(n_chars, modules)
    codes = torch.tensor(list(text.encode("ascii", errors="replace")), dtype=torch.long)
    count = (len(codes) - 1) // context
    period = max(2, round(1 / val_fraction))
    if count < BLOCK * period:
        raise lrsearch.TaskError(f"charlm: n_chars {n_chars} is too few for a validation set "
                                 f"(allowed: at least {BLOCK * period * context + 1} with context {context})")
    inputs = codes[: count * context].view(count, context)
    targets = codes[1 : count * context + 1].view(count, context)
    # Every period-th block of BLOCK windows is validation: both sets sample every module's style of code,
    # and a validation window never overlaps a training one.
    is_val = (torch.arange(count) // BLOCK) % period == period - 1

    def model() -> nn.Module:
        return char_transformer(context, d_model, heads, layers)

    return lrsearch.Task(
        model=model,
        train=TensorDataset(inputs[~is_val], targets[~is_val]),
        val=TensorDataset(inputs[is_val], targets[is_val]),
        loss=next_char_loss,
        metrics={"accuracy": accuracy, "bits_per_char": bits_per_char},
        info={"vocab": VOCAB, "train_windows": int((~is_val).sum()), "val_windows": int(is_val.sum())},
    )


def next_char_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy over every position of every window; ``output`` is ``(batch, context, VOCAB)``."""
    import torch

    return torch.nn.functional.cross_entropy(output.reshape(-1, VOCAB), target.reshape(-1))


def accuracy(output: Tensor, target: Tensor) -> float:
    return (output.argmax(dim=-1) == target).float().mean().item()


def bits_per_char(output: Tensor, target: Tensor) -> float:
    return next_char_loss(output, target).item() / math.log(2)


def char_transformer(context: int, d_model: int, heads: int, layers: int) -> nn.Module:
    """A pre-norm causal transformer of ``layers`` blocks with learned positions; one block of width 64 trains an
    epoch of the study in about a second on 2 CPU cores.

    A factory rather than a module-level class so importing this file does not import torch.
    """
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, d_model)
            self.position = nn.Parameter(torch.randn(context, d_model) * 0.02)
            block = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=4 * d_model, dropout=0.0,
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, VOCAB)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context),
                                 persistent=False)

        def forward(self, x: Tensor) -> Tensor:
            h = self.embed(x) + self.position[: x.shape[1]]
            h = self.blocks(h, mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True)
            return self.head(self.norm(h))

    return Model()
