"""Out of memory is a result: under a real allocation cap (RLIMIT_AS, in a subprocess) an Adam trial that does not
fit fails with the reason ``out of memory``, its memory is released and the next (SGD) trial completes under the
same cap; a run of them stops the study with one line. Every trial records its peak memory."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
from conftest import REPO

from lrsearch.errors import TrialRuntimeError
from lrsearch.training.memory import PeakMemory, is_out_of_memory

State = optuna.trial.TrialState

WIDE = textwrap.dedent('''
    """A 4000x4000 layer: 61 MiB of weights. SGD needs weights and gradients (122 MiB); Adam twice that."""
    import torch
    from torch.utils.data import TensorDataset
    import lrsearch

    def make():
        x, y = torch.randn(64, 4000, generator=torch.Generator().manual_seed(0)), torch.randint(0, 4, (64,))
        model = lambda: torch.nn.Sequential(torch.nn.Linear(4000, 4000), torch.nn.ReLU(), torch.nn.Linear(4000, 4))
        return lrsearch.Task(model, TensorDataset(x, y), TensorDataset(x[:64], y[:64]),
                             torch.nn.functional.cross_entropy)
''')

CAPPED_STUDIES = textwrap.dedent('''
    """Measure, then cap. Uncapped first, two SGD trials and one Adam trial: the peak memory of the last two is what
    each optimizer needs in a process that has trained before (torch's one-time growth is behind it), as it has in
    the capped studies that follow. Each study runs with the address space capped at what this process uses plus
    the midpoint of the two needs: an Adam trial does not fit, an SGD trial fits only in memory the failed Adam
    trial gave back."""
    import json, resource, sys
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    from conftest import tiny_study
    import torch
    from lrsearch.config.spec import spec_from_dict
    from lrsearch.errors import TrialRuntimeError
    from lrsearch.study.loop import run_study
    from lrsearch.study.storage import create_study, open_storage
    from lrsearch.training.prepared import prepare

    torch.set_num_threads(1)
    storage = open_storage(sys.argv[3])


    def study(name, order):
        spec = spec_from_dict(tiny_study(
            name=name, task={"entrypoint": "wide:make"}, budget={"n_trials": order.count("sgd") or len(order),
                                                                 "epochs": 1},
            train={"threads": 1}, sampler={"name": "random", "seed": 0},
            search={"optimizers": sorted(set(order)),
                    **{o: settings for o, settings in (("adam", {"lr": 1e-3, "weight_decay": 0.0}),
                                                        ("sgd", {"lr": 1e-2, "weight_decay": 0.0})) if o in order}}))
        created = create_study(spec, storage, name)
        for optimizer in order:
            created.enqueue_trial({"optimizer": optimizer})
        return created, prepare(spec)


    needs = {}
    for optimizer, trials in (("sgd", 2), ("adam", 1)):  # the first trial of a process also pays torch's growth
        measured, prepared = study(f"uncapped-{optimizer}", [optimizer] * trials)
        run_study(measured, storage, prepared)
        needs[optimizer] = measured.trials[-1].user_attrs["peak_memory_mb"]
    margin_mb = (needs["sgd"] + needs["adam"]) / 2
    stopped = {}
    for name, order in (("fits-after-oom", ["adam", "sgd"]), ("all-oom", ["adam"] * 3)):
        capped, prepared = study(name, order)
        status = open("/proc/self/status").read()
        used = int(next(l for l in status.splitlines() if l.startswith("VmSize:")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (used + int(margin_mb * 2**20), resource.RLIM_INFINITY))
        try:
            run_study(capped, storage, prepared)
        except TrialRuntimeError as exc:
            stopped[name] = str(exc)
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print(json.dumps({"needs": needs, "stopped": stopped}))
''')


@pytest.mark.slow
def test_an_out_of_memory_trial_fails_and_the_next_one_completes(tmp_path: Path) -> None:
    (tmp_path / "wide.py").write_text(WIDE)
    (tmp_path / "capped.py").write_text(CAPPED_STUDIES)
    storage = f"sqlite:///{tmp_path / 'lrsearch.db'}"
    # One malloc arena: a thread's own arena reserves 64 MB of address space, which the cap would count.
    result = subprocess.run([sys.executable, str(tmp_path / "capped.py"), str(REPO / "tests"), str(tmp_path),
                             storage], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MALLOC_ARENA_MAX": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    needs, stopped = report["needs"], report["stopped"]
    model = runpy.run_path(str(tmp_path / "wide.py"))["make"]().model()
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    # Adam keeps more tensors of the weights' size than SGD (its two moments): the cap, half-way, is at least half
    # the weights' size away from what either needs.
    assert needs["adam"] - needs["sgd"] >= weights_mb, needs

    fits = optuna.load_study(study_name="fits-after-oom", storage=storage).trials
    assert [(t.state, t.params["optimizer"]) for t in fits] == [(State.FAIL, "adam"), (State.COMPLETE, "sgd")]
    assert fits[0].user_attrs["fail_reason"] == "out of memory"
    # Its own weights and gradients, in memory Adam's trial gave back (the peak is counted in resident pages, a few
    # percent of which the allocator may still hold from before the trial: the tolerance of the PeakMemory test).
    assert fits[1].user_attrs["peak_memory_mb"] >= 0.95 * 2 * weights_mb
    assert "fits-after-oom" not in stopped

    failed = optuna.load_study(study_name="all-oom", storage=storage).trials
    assert [t.state for t in failed] == [State.FAIL] * 3
    assert all(t.user_attrs["fail_reason"] == "out of memory" for t in failed)
    assert stopped["all-oom"] == ("3 trials in a row ran out of memory on cpu (last, trial 2); try a smaller "
                                  "train.batch_size than 64")


def test_out_of_memory_errors_are_recognised() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(MemoryError())
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] . DefaultCPUAllocator: can't allocate memory: you tried "
                       "to allocate 100000000 bytes. Error code 12 (Cannot allocate memory)")
    assert is_out_of_memory(cpu)
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(TrialRuntimeError("3 trials in a row failed"))


def test_peak_memory_is_the_growth_while_inside() -> None:
    size = 25_000_000
    block_mb = size * 4 / 2**20  # float32
    with PeakMemory("cpu") as idle:
        pass
    with PeakMemory("cpu") as one:
        block = torch.ones(size)
        del block
    with PeakMemory("cpu") as two:
        block = torch.ones(2 * size)
        del block
    held = torch.ones(size)
    with PeakMemory("cpu") as beside:
        block = torch.ones(size)
        del block
    del held
    # The peak, though the block was freed inside: what was allocated inside, block for block (the kernel counts
    # resident memory in pages, and a thread's count lags by a few of them: a tolerance of a few percent)...
    assert one.mb == pytest.approx(block_mb, rel=0.05) and two.mb == pytest.approx(2 * block_mb, rel=0.05)
    # ...and only that: neither a block held when it was entered nor the rest of the process counts.
    assert beside.mb == pytest.approx(one.mb, rel=0.05)
    assert idle.mb is not None and idle.mb < 0.05 * block_mb
