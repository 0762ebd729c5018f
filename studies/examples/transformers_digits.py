"""Function mode with the Hugging Face ``Trainer``: a tiny BERT, built from a config, classifying 8x8 digits.

An ordinary ``Trainer`` script; the lines that involve lrsearch are marked ``# lrsearch``: the
``TrainingArguments`` get :func:`~lrsearch.integrations.transformers.trial_arguments` (the trial's epochs, batch
size, seed, device, one evaluation per epoch), and the Trainer gets
:func:`~lrsearch.integrations.transformers.trial_optimizers` as ``optimizers=`` and
:class:`~lrsearch.integrations.transformers.TrialCallback` (reports each evaluation, stops the trial when pruned).

No download: the model is ``BertForSequenceClassification`` from a ``BertConfig`` with random weights (seeded by
lrsearch, so every trial starts alike), and each digit from scikit-learn's bundled set is a sequence of 16 tokens
after a [CLS] token: the 8x8 image summed over 2x2 blocks, intensities 0-64. Its size comes from the study's
``task.args``.

Used from a study file (the module is found next to the study file)::

    task: {function: "transformers_digits:train", args: {hidden: 32, layers: 2}}

Example:
    >>> trainer = fit(ctx)  # one trial; trainer.state.epoch is how many epochs it trained
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from lrsearch.integrations.transformers import TrialCallback, trial_arguments, trial_optimizers  # lrsearch

if TYPE_CHECKING:
    from lrsearch import TrialContext

PAD, CLS = 0, 66
"""Token ids: the intensity v (0-64) of a 2x2 block of pixels is token v + 1."""
transformers.logging.set_verbosity_error()  # quiet inside a study: a trial is one of many


class Digits(torch.utils.data.Dataset):
    """Digits as token sequences: ``{"input_ids": [CLS, 16 blocks of 2x2 pixels], "labels": digit}``."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray) -> None:
        blocks = pixels.reshape(-1, 4, 2, 4, 2).sum(axis=(2, 4)).reshape(-1, 16)  # 8x8 -> 4x4, still legible
        tokens = torch.tensor(blocks, dtype=torch.long) + 1
        self.input_ids = torch.cat([torch.full((len(tokens), 1), CLS), tokens], dim=1)
        self.labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}


@functools.lru_cache(maxsize=2)
def load_digits(val_fraction: float = 0.2) -> tuple[Digits, Digits]:
    """Train and val sets; loaded once per process.

    Example:
        >>> train, val = load_digits()
        >>> len(train), train[0]["input_ids"].shape
        (1437, torch.Size([17]))
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    x, y = sklearn_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x.astype(np.int64), y, test_size=val_fraction, random_state=0)
    return Digits(x_train, y_train), Digits(x_val, y_val)


def tiny_bert(hidden: int = 32, layers: int = 2, heads: int = 2) -> BertForSequenceClassification:
    """A BERT classifier from a config, randomly initialised (nothing is downloaded); no dropout, which on a model
    this small would cost more time than the matrix products."""
    config = BertConfig(vocab_size=CLS + 1, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden, max_position_embeddings=17, num_labels=10, pad_token_id=PAD,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def accuracy(prediction: transformers.EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def fit(ctx: TrialContext) -> Trainer:
    """Train one trial and return its Trainer; a pruned trial's ``train()`` returns at the pruned epoch."""
    train_set, val_set = load_digits(ctx.args.get("val_fraction", 0.2))
    model = tiny_bert(int(ctx.args.get("hidden", 32)), int(ctx.args.get("layers", 2)))
    args = TrainingArguments(output_dir=f"hf-trials/trial-{ctx.trial_number}", save_strategy="no",
                             per_device_eval_batch_size=512, disable_tqdm=True,
                             **trial_arguments(ctx))  # lrsearch
    trainer = Trainer(model, args, train_dataset=train_set, eval_dataset=val_set, compute_metrics=accuracy,
                      optimizers=trial_optimizers(ctx, model, args, train_set),  # lrsearch
                      callbacks=[TrialCallback(ctx)])  # lrsearch
    trainer.remove_callback(transformers.PrinterCallback)  # quiet: lrsearch shows each trial's progress
    trainer.train()
    return trainer


def train(ctx: TrialContext) -> None:
    """One trial (what ``task.function`` names): the reports are the trial's metrics, so nothing is returned."""
    fit(ctx)

