"""One contract every optimizer preset satisfies; each preset is only a parameter of it."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from lrsearch.config.presets import PRESETS, OptimizerPreset, aux_kwargs, torch_kwargs
from lrsearch.errors import UsageError
from lrsearch.training.optimizers import (
    build,
    build_optimizer,
    build_scheduler,
    create_optimizer,
    optimizer_class,
    set_mode,
)
from lrsearch.training.split import CombinedOptimizer


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _expected_implementation(preset: OptimizerPreset) -> str:
    """What the class itself says it supports for float32 CPU tensors (asked independently of lrsearch)."""
    cls = optimizer_class(preset.torch_class)
    named = inspect.signature(cls).parameters
    param = torch.nn.Parameter(torch.zeros(2, 2))
    for impl in ("fused", "foreach"):
        if impl not in named:
            continue
        try:
            cls([param], **{preset.step_size: 0.1}, **{impl: True})
            return impl
        except (RuntimeError, ValueError, TypeError):
            continue
    return "default"


def _params(name: str) -> dict[str, float]:
    """The preset's textbook point: its step size and defaults."""
    preset = PRESETS[name]
    return {preset.step_size: preset.textbook_lr, **preset.defaults}


def _loss_falls(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    before = torch.nn.functional.mse_loss(model(x), y).item()
    for _ in range(5):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    set_mode(optimizer, training=False)  # Schedule-Free: its averaged weights
    return torch.nn.functional.mse_loss(model(x), y).item() < before


@pytest.mark.parametrize("name", list(PRESETS))
class TestEveryOptimizer:
    def test_builds_with_the_fastest_supported_implementation_and_steps(self, name: str) -> None:
        preset = PRESETS[name]
        model = _model()
        config = {"optimizer": name, "params": _params(name), "schedule": {"name": "constant"}}
        built = build(config, model, total_steps=100)
        if preset.hidden_only:  # Muon on the hidden weight, AdamW (fused on CPU) on the rest
            assert isinstance(built.optimizer, CombinedOptimizer)
            assert {k: type(v).__name__ for k, v in built.optimizer.parts.items()} == {"muon": "Muon",
                                                                                       "adamw": "AdamW"}
            assert built.implementation == f"muon:{_expected_implementation(preset)}+adamw:fused"
            assert built.param_split == {"muon": ["0.weight"], "adamw": ["0.bias", "2.weight", "2.bias"]}
        else:
            assert type(built.optimizer).__name__ == preset.class_path[1]
            assert built.implementation == _expected_implementation(preset)
            assert built.param_split is None
            if built.implementation != "default":
                assert built.optimizer.defaults[built.implementation] is True
        assert _loss_falls(model, built.optimizer)

    def test_export_form_builds_the_same_optimizer(self, name: str, tmp_path) -> None:
        preset = PRESETS[name]
        export = {"optimizer": name, "torch_class": preset.qualified_class,
                  "kwargs": torch_kwargs(name, _params(name), total_steps=100)}
        if preset.hidden_only:
            export |= {"aux": {"torch_class": "torch.optim.AdamW", "kwargs": aux_kwargs(name, _params(name))},
                       "param_split": {"muon": ["2.weight"], "adamw": ["0.weight", "0.bias", "2.bias"]}}
        path = tmp_path / "best.json"
        path.write_text(json.dumps(export))
        model = _model()
        optimizer = build_optimizer(path, model)
        groups = optimizer.param_groups
        assert groups[0][preset.step_size] == preset.textbook_lr
        if preset.hidden_only:  # exactly the recorded split, even where the split rule would choose otherwise
            assert groups[0]["params"] == [model[2].weight] and groups[1]["lr"] == preset.defaults["aux_lr"]
            assert optimizer.state_dict()["parts"].keys() == {"muon", "adamw"}
        else:
            assert type(optimizer).__name__ == preset.class_path[1]


def test_a_missing_extra_or_an_old_torch_is_one_line_naming_what_to_install(monkeypatch) -> None:
    from lrsearch.config import presets

    monkeypatch.setattr(presets.importlib.util, "find_spec", lambda module: None)
    assert PRESETS["lion"].problem() == ("'lion' needs the optimizers extra (pytorch_optimizer is not installed): "
                                         "pip install 'lrsearch[optimizers]'")
    monkeypatch.setattr(presets, "_torch_version", lambda: (2, 4, 1))
    assert PRESETS["muon"].problem() == "'muon' needs torch >= 2.9 (this is torch 2.4.1): pip install 'torch>=2.9'"
    assert PRESETS["adafactor"].problem() == ("'adafactor' needs torch >= 2.5 (this is torch 2.4.1): pip install "
                                              "'torch>=2.5'")
    assert PRESETS["adamw"].problem() is None


def test_a_keyword_the_class_does_not_take_is_refused() -> None:
    with pytest.raises(UsageError, match=r"pytorch_optimizer\.SOAP takes no argument 'precondition_freq'"):
        create_optimizer("pytorch_optimizer.SOAP", {"lr": 3e-3, "precondition_freq": 5}, _model().parameters())


def test_fused_is_on_where_torch_has_it_on_cpu() -> None:
    optimizer = build_optimizer({"optimizer": "adamw", "kwargs": {"lr": 1e-3}}, _model().parameters())
    assert optimizer.defaults["fused"] is True
    optimizer = build_optimizer({"optimizer": "nadam", "kwargs": {"lr": 1e-3}}, _model().parameters())
    assert optimizer.defaults["foreach"] is True


@pytest.mark.parametrize("schedule", ["cosine", "linear", "warmup_cosine"])
def test_schedules_start_near_lr_and_decay(schedule: str) -> None:
    optimizer = torch.optim.SGD(_model().parameters(), lr=0.1)
    config = {"optimizer": "sgd", "schedule": {"name": schedule, "warmup_fraction": 0.1}, "training": {"epochs": 2}}
    scheduler = build_scheduler(config, optimizer, steps_per_epoch=50)
    lrs = []
    for _ in range(100):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(0.1, rel=0.05)
    assert lrs[-1] < 0.01


def test_constant_schedule_is_none() -> None:
    optimizer = torch.optim.SGD(_model().parameters(), lr=0.1)
    assert build_scheduler({"optimizer": "sgd", "schedule": {"name": "constant"}}, optimizer, 10) is None


def test_large_cpu_tensors_skip_foreach_where_the_per_tensor_loop_is_faster() -> None:
    big = [torch.nn.Parameter(torch.zeros(512, 512)) for _ in range(2)]
    assert create_optimizer("RMSprop", {"lr": 1e-3}, big)[1] == "default"
    assert create_optimizer("Adam", {"lr": 1e-3}, big)[1] == "fused"  # fused stays the pick: one kernel per step
    small = [torch.nn.Parameter(torch.zeros(64, 64)) for _ in range(2)]
    assert create_optimizer("RMSprop", {"lr": 1e-3}, small)[1] == "foreach"
