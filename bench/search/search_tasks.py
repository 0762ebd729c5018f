"""The search benchmark's tasks: cheap ones (a full trial well under a second on one core) on which the optimizer
choice matters, as lrsearch study files.

Five are for development (digits-mlp and the quadratic are the shipped studies); two are held out: they were looked
at only after the default search was chosen, and they search a wider space. These seven are the base tasks. Their
variants (wider, longer, a new split) are the other halves of the warm-start pairs. The family tasks search the
optimizer families people weigh today (Muon, Lion, SOAP, Schedule-Free AdamW, Prodigy and AdamW): a small
transformer language model (tiny-lm, a full trial about 4 s with AdamW and 11 s with Muon on one core: torch's Muon
orthogonalises in bfloat16, slow on a CPU without bf16 instructions) and two base tasks searching those families;
they are not base tasks (the targets do not count them: they would cost the full run more than an hour at 10
seeds). Every dataset ships with a package or is generated: nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DEFAULT_OPTIMIZERS = ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"]  # studies/digits-mlp.yaml
DEFAULT_SCHEDULES = ["constant", "cosine"]


@dataclass(frozen=True)
class BenchTask:
    name: str
    task: str | dict[str, Any]
    """A built-in task name, or ``{"entrypoint": "search_tasks:<function>"}``."""
    epochs: int
    batch_size: int
    metric: str
    direction: str
    search: dict[str, Any] = field(default_factory=lambda: {"optimizers": DEFAULT_OPTIMIZERS,
                                                            "schedules": DEFAULT_SCHEDULES})
    holdout: bool = False

    def study(self, seed: int) -> dict[str, Any]:
        """The study file of this task for one seed (training and sampler), without sampler or pruner."""
        return {"name": f"{self.name}-seed{seed}", "task": self.task,
                "objective": {"metric": self.metric, "direction": self.direction},
                "budget": {"n_trials": 25, "epochs": self.epochs},
                "train": {"batch_size": self.batch_size, "device": "cpu", "seed": seed, "threads": 1},
                "search": dict(self.search), "sampler": {"seed": seed}}


def _standardise(x_train: Any, x_val: Any) -> tuple[Any, Any]:
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    return (x_train - mean) / std, (x_val - mean) / std


def _accuracy(output: Any, target: Any) -> float:
    return (output.argmax(dim=1) == target).float().mean().item()


def digits_cnn() -> Any:
    """The 8x8 digits as images, a two-conv-layer CNN (no normalisation)."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn
    from torch.utils.data import TensorDataset

    import lrsearch

    x, y = load_digits(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(x / 16.0, y, test_size=0.2, stratify=y, random_state=0)

    def data(a: Any, b: Any) -> TensorDataset:
        return TensorDataset(torch.tensor(a, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.tensor(b))

    def model() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                             nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 64), nn.ReLU(), nn.Linear(64, 10))

    return lrsearch.Task(model, data(x_tr, y_tr), data(x_va, y_va), torch.nn.functional.cross_entropy,
                         {"accuracy": _accuracy})


def resmlp_bn(n: int = 2400, features: int = 32, classes: int = 8, width: int = 48, blocks: int = 2) -> Any:
    """A residual MLP with BatchNorm on a synthetic, nonlinearly separable classification problem."""
    import torch
    from sklearn.datasets import make_classification
    from torch import nn
    from torch.utils.data import TensorDataset

    import lrsearch

    x, y = make_classification(n_samples=n, n_features=features, n_informative=16, n_redundant=8, n_classes=classes,
                               n_clusters_per_class=3, class_sep=1.0, flip_y=0.03, random_state=1)
    cut = int(0.75 * n)
    x_tr, x_va = _standardise(x[:cut], x[cut:])

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Sequential(nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width),
                                   nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width))

        def forward(self, h: Any) -> Any:
            return h + self.f(h)

    def model() -> nn.Module:
        return nn.Sequential(nn.Linear(features, width), *[Block() for _ in range(blocks)], nn.BatchNorm1d(width),
                             nn.ReLU(), nn.Linear(width, classes))

    def data(a: Any, b: Any) -> TensorDataset:
        return TensorDataset(torch.tensor(a, dtype=torch.float32), torch.tensor(b))

    return lrsearch.Task(model, data(x_tr, y[:cut]), data(x_va, y[cut:]), torch.nn.functional.cross_entropy,
                         {"accuracy": _accuracy})


def teacher_regression(n: int = 2000, features: int = 16, noise: float = 0.1) -> Any:
    """A student MLP (tanh) fitting a random teacher network (tanh, two hidden layers) with noise; MSE."""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    import lrsearch

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, features, generator=gen)
    w1 = torch.randn(features, 32, generator=gen) / features ** 0.5 * 2.0
    w2 = torch.randn(32, 32, generator=gen) / 32 ** 0.5 * 2.0
    w3 = torch.randn(32, 1, generator=gen) / 32 ** 0.5
    y = torch.tanh(torch.tanh(x @ w1) @ w2) @ w3
    y = (y - y.mean()) / y.std() + noise * torch.randn(n, 1, generator=gen)
    cut = int(0.8 * n)

    def model() -> nn.Module:
        return nn.Sequential(nn.Linear(features, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))

    return lrsearch.Task(model, TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:]),
                         torch.nn.functional.mse_loss)


def diabetes_mlp() -> Any:
    """scikit-learn's bundled diabetes regression (442 patients), standardised target, an MLP with LayerNorm."""
    import torch
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split
    from torch import nn
    from torch.utils.data import TensorDataset

    import lrsearch

    x, y = load_diabetes(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.25, random_state=0)
    x_tr, x_va = _standardise(x_tr, x_va)
    mu, sd = y_tr.mean(), y_tr.std()

    def data(a: Any, b: Any) -> TensorDataset:
        return TensorDataset(torch.tensor(a, dtype=torch.float32),
                             torch.tensor((b - mu) / sd, dtype=torch.float32).reshape(-1, 1))

    def model() -> nn.Module:
        return nn.Sequential(nn.Linear(10, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 64), nn.LayerNorm(64),
                             nn.GELU(), nn.Linear(64, 1))

    return lrsearch.Task(model, data(x_tr, y_tr), data(x_va, y_va), torch.nn.functional.mse_loss)


def char_lm(context: int = 8, emb: int = 16, hidden: int = 128, n_train: int = 12000, n_val: int = 3000) -> Any:
    """A tiny character-level language model (an MLP over the previous ``context`` characters) on the docstrings of
    a few standard-library modules: text that ships with Python."""
    import collections
    import inspect
    import json
    import string
    import textwrap

    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    import lrsearch

    sources = (collections, json, string, textwrap, inspect, textwrap.wrap, json.dumps, json.loads,
               inspect.signature, collections.namedtuple, str.split, str.format)
    text = "\n".join(inspect.getdoc(s) or "" for s in sources)
    text = "".join(c for c in text.lower() if c in string.ascii_lowercase + " .,\n()'")
    vocab = sorted(set(text))
    windows = torch.tensor([vocab.index(c) for c in text]).unfold(0, context + 1, 1)
    n_train = min(n_train, int(0.8 * len(windows)))
    train, val = windows[:n_train], windows[-min(n_val, len(windows) - n_train):]

    def model() -> nn.Module:
        return nn.Sequential(nn.Embedding(len(vocab), emb), nn.Flatten(), nn.Linear(context * emb, hidden), nn.Tanh(),
                             nn.Linear(hidden, len(vocab)))

    return lrsearch.Task(model, TensorDataset(train[:, :-1], train[:, -1]), TensorDataset(val[:, :-1], val[:, -1]),
                         torch.nn.functional.cross_entropy, {"accuracy": _accuracy})


def tiny_lm(context: int = 32, d_model: int = 64, heads: int = 4, layers: int = 2, n_train: int = 512,
            n_val: int = 256) -> Any:
    """A small decoder-only transformer (pre-norm, causal self-attention built from ``nn.Linear`` so that Muon has
    hidden 2-D weights) predicting the next character at every position of ``context``-character windows of the
    source of a few standard-library modules: text that ships with Python. The output head is the last
    ``nn.Linear`` the model registers, so lrsearch's split rule gives it, the embeddings, the norms and the biases
    to AdamW when Muon is chosen. The loss is the mean over every position of the batch."""
    import inspect
    import json
    import string
    import textwrap

    import torch
    from torch import nn
    from torch.nn import functional
    from torch.utils.data import TensorDataset

    import lrsearch

    text = "\n".join(inspect.getsource(m) for m in (textwrap, string, json))
    vocab = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
    text = "".join(c if c in vocab else " " for c in text)
    # Non-overlapping windows, each one longer than the context: its inputs and, shifted by one, its targets.
    windows = torch.tensor([vocab.index(c) for c in text]).unfold(0, context + 1, context + 1)
    cut = min(n_train, int(0.8 * len(windows)))
    train, val = windows[:cut], windows[cut:cut + n_val]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
            self.qkv, self.proj = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
            self.up, self.down = nn.Linear(d_model, 4 * d_model), nn.Linear(4 * d_model, d_model)

        def forward(self, h: Any) -> Any:
            b, t, _ = h.shape
            q, k, v = self.qkv(self.norm1(h)).view(b, t, 3, heads, d_model // heads).permute(2, 0, 3, 1, 4)
            attended = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + self.proj(attended.transpose(1, 2).reshape(b, t, d_model))
            return h + self.down(functional.gelu(self.up(self.norm2(h))))

    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.position = nn.Embedding(len(vocab), d_model), nn.Embedding(context, d_model)
            self.blocks = nn.Sequential(*[Block() for _ in range(layers)])
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, len(vocab))  # registered last: the output layer of the split rule

        def forward(self, x: Any) -> Any:
            h = self.embed(x) + self.position(torch.arange(x.shape[1], device=x.device))
            return self.head(self.norm(self.blocks(h)))

    def loss(output: Any, target: Any) -> Any:
        return functional.cross_entropy(output.flatten(0, 1), target.flatten())

    def accuracy(output: Any, target: Any) -> float:
        return (output.argmax(dim=-1) == target).float().mean().item()

    return lrsearch.Task(TinyLM, TensorDataset(train[:, :-1], train[:, 1:]), TensorDataset(val[:, :-1], val[:, 1:]),
                         loss, {"accuracy": accuracy})


def _entry(function: str, **args: Any) -> dict[str, Any]:
    return {"entrypoint": f"search_tasks:{function}", **({"args": args} if args else {})}


TASKS: dict[str, BenchTask] = {t.name: t for t in [
    BenchTask("digits-mlp", "digits-mlp", 20, 64, "val_loss", "minimize"),
    BenchTask("quadratic", "quadratic", 10, 128, "val_loss", "minimize",
              {"optimizers": ["sgd", "momentum", "adam"], "schedules": ["constant"],
               "sgd": {"lr": {"low": 1e-4, "high": 1e-1}, "weight_decay": 0.0},
               "momentum": {"lr": {"low": 1e-4, "high": 1e-1}, "weight_decay": 0.0},
               "adam": {"lr": {"low": 1e-4, "high": 1.0}, "weight_decay": 0.0}}),
    BenchTask("digits-cnn", _entry("digits_cnn"), 10, 64, "val_loss", "minimize"),
    BenchTask("resmlp-bn", _entry("resmlp_bn"), 12, 128, "val_accuracy", "maximize"),
    BenchTask("teacher-reg", _entry("teacher_regression"), 20, 64, "val_loss", "minimize"),
    BenchTask("char-lm", _entry("char_lm"), 6, 128, "val_loss", "minimize",
              {"optimizers": ["momentum", "nesterov", "adam", "adamw", "nadam", "radam", "adagrad"],
               "schedules": ["constant", "cosine", "warmup_cosine"]}, holdout=True),
    BenchTask("diabetes-mlp", _entry("diabetes_mlp"), 40, 32, "val_loss", "minimize", holdout=True),
]}
"""Every task by name; ``holdout=True`` marks the two held out while the default was chosen. These seven are the
base tasks the targets count."""


def _variant(base: str, name: str, **changes: Any) -> BenchTask:
    return dataclasses.replace(TASKS[base], name=name, **changes)


VARIANTS: dict[str, BenchTask] = {t.name: t for t in [
    _variant("digits-mlp", "digits-mlp-h64", task={"entrypoint": "lrsearch.training.tasks:digits_mlp",
                                                   "args": {"hidden": 64}}),
    _variant("digits-mlp", "digits-mlp-split1", task={"entrypoint": "lrsearch.training.tasks:digits_mlp",
                                                      "args": {"split_seed": 1}}),
    _variant("teacher-reg", "teacher-reg-10ep", epochs=10),
    _variant("quadratic", "quadratic-5ep", epochs=5),
    _variant("char-lm", "char-lm-h256", task=_entry("char_lm", hidden=256)),
]}
"""Base tasks changed the way a user's next study changes an earlier one (the same model wider, trained longer, on
a new split of its data): the other halves of the warm-start pairs (``pairs.py``). Not base tasks."""

FAMILY_OPTIMIZERS = ["adamw", "muon", "lion", "soap", "schedulefree_adamw", "prodigy"]
"""The optimizer families people weigh today (issue 22), AdamW first."""
_FAMILY_SEARCH = {"optimizers": FAMILY_OPTIMIZERS, "schedules": DEFAULT_SCHEDULES}
FAMILY_TASKS: dict[str, BenchTask] = {t.name: t for t in [
    BenchTask("tiny-lm", _entry("tiny_lm"), 6, 32, "val_loss", "minimize", _FAMILY_SEARCH),
    _variant("char-lm", "char-lm-families", search=_FAMILY_SEARCH, holdout=False),
    _variant("digits-cnn", "digits-cnn-families", search=_FAMILY_SEARCH),
]}
"""Tasks on which the choice between optimizer families is the question (issue 22): the default searches
:data:`FAMILY_OPTIMIZERS` and is compared with the same search restricted to AdamW (``tuned-adamw``). Muon updates
the hidden 2-D weights by lrsearch's split rule (tiny-lm: attention and MLP matrices; char-lm: its hidden layer;
digits-cnn: its hidden linear layer, the conv kernels going to AdamW). Not base tasks."""

ALL_TASKS: dict[str, BenchTask] = TASKS | VARIANTS | FAMILY_TASKS
