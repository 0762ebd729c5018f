"""Which GPUs each --workers process gets: a pure function of the worker count, the device, the ranks per trial
and the visible GPUs; and the one-line refusals, before anything is created."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_study, write_study

from lrsearch.cli import cli
from lrsearch.errors import UsageError
from lrsearch.training.devices import FAKE_GPUS_ENV, assign_gpus, parse_workers, visible_gpus

EIGHT = [str(i) for i in range(8)]


def test_auto_is_one_worker_per_gpu_or_per_set_of_ranks() -> None:
    assert assign_gpus("auto", "cuda", 1, EIGHT) == [[g] for g in EIGHT]
    assert assign_gpus("auto", "auto", 2, EIGHT) == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    assert assign_gpus("auto", "auto", 3, EIGHT) == [["0", "1", "2"], ["3", "4", "5"]]  # GPUs 6, 7 stay idle
    assert assign_gpus("auto", "auto", "auto", EIGHT) == [EIGHT]  # every GPU is one trial's: one worker
    assert assign_gpus("auto", "cuda", 1, ["GPU-a1", "GPU-b2"]) == [["GPU-a1"], ["GPU-b2"]]


def test_n_workers_get_disjoint_sets_of_m_gpus() -> None:
    assert assign_gpus(3, "cuda", 2, EIGHT) == [["0", "1"], ["2", "3"], ["4", "5"]]
    assert assign_gpus("2", "auto", "4", EIGHT) == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]
    plan = assign_gpus(4, "cuda", 2, ["3", "5", "6", "7", "0", "1", "2", "4"])
    assert [g for gpus in plan for g in gpus] == ["3", "5", "6", "7", "0", "1", "2", "4"]  # in order, each once


def test_more_gpus_than_visible_or_one_named_gpu_for_several_workers_are_refused() -> None:
    with pytest.raises(UsageError, match=r"^--workers 5 x --nproc-per-trial 2 needs 10 GPUs, one per rank; 8 are "
                                         r"visible \(0,1,2,3,4,5,6,7\)$"):
        assign_gpus(5, "cuda", 2, EIGHT)
    with pytest.raises(UsageError, match="needs 16 GPUs"):
        assign_gpus(2, "auto", "auto", EIGHT)
    with pytest.raises(UsageError, match=r"train.device 'cuda:1': several workers each get GPUs of their own"):
        assign_gpus("auto", "cuda:1", 1, EIGHT)
    assert assign_gpus(1, "cuda:1", 1, EIGHT) == [[]]  # one process on the GPU it names, as without --workers


def test_on_the_cpu_workers_are_as_today() -> None:
    assert assign_gpus("auto", "auto", 1, []) == [[]]  # auto on a CPU machine: one process, as without --workers
    assert assign_gpus(4, "cpu", 2, EIGHT) == [[], [], [], []]  # CPU training ignores the GPUs
    assert assign_gpus(3, "auto", 1, []) == [[], [], []]
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(UsageError, match=f"--workers must be a positive integer \\(got {bad}\\) or 'auto'"):
            parse_workers(bad)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(FAKE_GPUS_ENV, "3")
    assert visible_gpus() == ["0", "1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7,9")
    assert visible_gpus() == ["4", "6", "7"]  # torch numbers what it sees from CUDA_VISIBLE_DEVICES' first
    monkeypatch.setenv(FAKE_GPUS_ENV, "0")
    assert visible_gpus() == []
    monkeypatch.delenv(FAKE_GPUS_ENV)
    assert visible_gpus() == []  # this machine has no CUDA


def test_too_many_gpus_asked_is_one_line_exit_2_and_creates_nothing(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAKE_GPUS_ENV, "4")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    path = write_study(tmp_path, tiny_study(train={"device": "auto"}))
    before = set(os.listdir(tmp_path))
    result = CliRunner().invoke(cli, ["tune", str(path), "--workers", "3", "--nproc-per-trial", "2"])
    assert result.exit_code == 2
    assert result.stderr == ("error: --workers 3 x --nproc-per-trial 2 needs 6 GPUs, one per rank; 4 are visible "
                             "(0,1,2,3)\n")
    assert set(os.listdir(tmp_path)) == before
