"""One contract every optimizer preset satisfies; each preset is only a parameter of it."""

from __future__ import annotations

import json

import pytest
import torch

from lrsearch.config.search_space import PRESETS
from lrsearch.training.optimizers import build_optimizer, build_scheduler, constructor, create_optimizer


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _expected_implementation(torch_class: str) -> str:
    """What torch itself says it supports for float32 CPU tensors (asked independently of lrsearch)."""
    cls = getattr(torch.optim, torch_class)
    param = torch.nn.Parameter(torch.zeros(2))
    for impl in ("fused", "foreach"):
        try:
            cls([param], lr=0.1, **{impl: True})
            return impl
        except (RuntimeError, ValueError, TypeError):
            continue
    return "default"


def _params(name: str) -> dict[str, float]:
    return {"lr": 1e-2, **({"momentum": 0.9} if "momentum" in PRESETS[name].hyperparameters else {})}


@pytest.mark.parametrize("name", list(PRESETS))
class TestEveryOptimizer:
    def test_builds_with_the_fastest_supported_implementation_and_steps(self, name: str) -> None:
        model = _model()
        config = {"optimizer": name, "params": _params(name), "schedule": {"name": "constant"}}
        torch_class, kwargs = constructor(config)
        optimizer, impl = create_optimizer(torch_class, kwargs, model.parameters())
        assert type(optimizer).__name__ == PRESETS[name].torch_class
        assert impl == _expected_implementation(torch_class)
        if impl != "default":
            assert optimizer.defaults[impl] is True
        x, y = torch.randn(32, 8), torch.randn(32, 1)
        before = torch.nn.functional.mse_loss(model(x), y)
        for _ in range(5):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        assert torch.nn.functional.mse_loss(model(x), y) < before

    def test_export_form_builds_the_same_optimizer(self, name: str, tmp_path) -> None:
        preset = PRESETS[name]
        kwargs = {**_params(name), **preset.torch_fixed}
        path = tmp_path / "best.json"
        path.write_text(json.dumps({"optimizer": name, "torch_class": f"torch.optim.{preset.torch_class}",
                                    "kwargs": kwargs}))
        optimizer = build_optimizer(path, _model().parameters())
        assert type(optimizer).__name__ == preset.torch_class
        assert optimizer.defaults["lr"] == 0.01


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
