"""Streamed task data (issue 15): memory on a memory-mapped dataset of several GiB, and speed against the tensor path.

1. Memory. The bench writes a synthetic dataset of 4 GiB (64x64 RGB uint8 images in 10 classes, one ``np.memmap``
   file, random flips as augmentation) to a temporary directory, runs ``lrsearch tune`` on it in task mode (one
   trial, one epoch: every image read once), and samples that process and its loader workers every 0.2 s: the
   tree's proportional set size (PSS: pages shared by forked workers split between them, not counted twice) and the
   tune process's own peak RSS (VmHWM). Target: both under a quarter of the dataset's size (which must be at least
   2 GiB). Why 4 GiB: what the study holds hardly grows with the dataset (656 MiB of PSS on 0.25 GiB, 714 MiB on
   4 GiB: Python, torch and Optuna, the CNN's training workspace, one loader worker each for train and val), and a
   quarter of 2 GiB is less than that.
2. Speed. On the first 8,192 images (96 MiB as uint8), the same task trains with its data read once into tensors
   (``Task(in_memory=True)``, the fast path) and streamed through the DataLoader every epoch (``in_memory=False``),
   side by side: interleaved rounds of 2 epochs each, samples/s as the trial reports them, each path with the
   threads and loader workers lrsearch picks for it. Target: streamed at least 0.8x the tensor path (median of the
   rounds' ratios). The CPU each path spends per image is reported too, and what it allows.

The model is a small CNN (two convolutions, about 0.5 ms of CPU per image to train on this project's 2-core build
machine); the loader's own work per image is fixed (60-70 us there), so heavier models stream relatively cheaper.
The temporary directory is removed at the end, on failure and on Ctrl-C too.

    python bench/streaming.py [--gib 4.0] [--rounds 3] [--epochs 2] [--tmp DIR]

Exits 1 when a target is missed; writes bench/results/streaming.json (git-ignored).
"""

from __future__ import annotations

import argparse
import math
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    BENCH_DIR,
    REPO_ROOT,
    lrsearch_command,
    machine_info,
    print_machine,
    print_table,
    verdict,
    write_results,
)

SHAPE = (3, 64, 64)
ITEM_BYTES = math.prod(SHAPE)
CLASSES = 10
VAL_ITEMS = 4096
SPEED_ITEMS = 8192
MEMORY_TARGET = 0.25
SPEED_TARGET = 0.8
CONFIG = {"optimizer": "momentum", "params": {"lr": 0.02, "momentum": 0.9}, "schedule": {"name": "constant"}}


# -- the task (imported by lrsearch as "streaming:make") ---------------------------------------------------------
class MemmapImages:
    """Images ``start..stop`` of ``images.u8`` as uint8 tensors, flipped left-right at random when ``augment``.

    Each process maps the file once, read-only. Pages read through a mapping count in the reading process's RSS
    until unmapped (and a fault maps up to 64 KiB around the page read), so every ``DROP_EVERY`` reads the
    mapping's pages are dropped (``MADV_DONTNEED``: they stay in the page cache, and the next read of them is a
    minor fault): memory stays bounded however much is read.
    """

    DROP_EVERY = 64

    def __init__(self, directory: str, start: int, stop: int, augment: bool) -> None:
        import numpy as np

        self.path, self.start, self.stop, self.augment = Path(directory) / "images.u8", start, stop, augment
        self.labels = np.fromfile(Path(directory) / "labels.i64", dtype=np.int64)[start:stop]
        self._opened: tuple[int, Any, Any] | None = None
        self._reads = 0

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> tuple[Any, int]:
        images, mapping = self._images()
        image = torch.from_numpy(images[self.start + index].copy())
        self._reads += 1
        if self._reads % self.DROP_EVERY == 0:
            mapping.madvise(mmap.MADV_DONTNEED)
        if self.augment and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, int(self.labels[index])

    def _images(self) -> tuple[Any, mmap.mmap]:
        import numpy as np

        if self._opened is None or self._opened[0] != os.getpid():  # a forked loader worker maps it for itself
            with open(self.path, "rb") as file:
                mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            images = np.frombuffer(mapping, dtype=np.uint8).reshape(-1, *SHAPE)
            self._opened = (os.getpid(), images, mapping)
        return self._opened[1], self._opened[2]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_opened": None}  # a mapping does not pickle (spawned workers map their own)


class Scale(torch.nn.Module):
    """uint8 pixels to [0, 1] floats on the training device: a quarter of the bytes cross from the loader."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div(255)


def make(directory: str, count: int | None = None, in_memory: bool | None = None) -> Any:
    """The bench's task: the dataset's first ``count`` images (all by default), the last 4,096 of them for val; a
    small CNN over 64x64 RGB images in 10 classes."""
    import lrsearch

    stored = (Path(directory) / "images.u8").stat().st_size // ITEM_BYTES
    total = min(count or stored, stored)
    val = min(VAL_ITEMS, total // 4)

    def model() -> torch.nn.Module:
        return torch.nn.Sequential(
            Scale(), torch.nn.Conv2d(3, 64, 4, stride=4), torch.nn.ReLU(),
            torch.nn.Conv2d(64, 128, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(128 * 8 * 8, CLASSES))

    return lrsearch.Task(model, MemmapImages(directory, 0, total - val, augment=in_memory is not True),
                         MemmapImages(directory, total - val, total, augment=False),
                         torch.nn.functional.cross_entropy, in_memory=in_memory,
                         metrics={"accuracy": lambda out, y: (out.argmax(1) == y).float().mean().item()})


def write_dataset(directory: Path, gib: float) -> tuple[int, int]:
    """Write ``images.u8`` (``gib`` GiB or more) and ``labels.i64``; returns (images, bytes). Each class is a fixed
    random pattern plus noise, so a small CNN learns it."""
    import numpy as np

    count = math.ceil(gib * 2**30 / ITEM_BYTES)
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, size=(CLASSES, *SHAPE), dtype=np.int16)
    labels = rng.integers(0, CLASSES, size=count)
    labels.astype(np.int64).tofile(directory / "labels.i64")
    with open(directory / "images.u8", "wb") as out:
        for start in range(0, count, 8192):
            chunk = labels[start : start + 8192]
            noise = rng.integers(-96, 97, size=(len(chunk), *SHAPE), dtype=np.int16)
            out.write(np.clip(patterns[chunk] + noise, 0, 255).astype(np.uint8).tobytes())
    return count, count * ITEM_BYTES


# -- 1. memory --------------------------------------------------------------------------------------------------
class TreeMemory:
    """Samples a process and its descendants every ``period`` s: the peak of their summed PSS and each one's peak
    RSS (VmHWM), in bytes."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        self.pid, self.period = pid, period
        self.peak_pss, self.peak_rss, self.processes = 0, 0, set()
        self.worker_peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            tree = _descendants(self.pid)
            self.processes |= set(tree)
            self.peak_pss = max(self.peak_pss, sum(_kib(pid, "smaps_rollup", "Pss") for pid in tree) * 1024)
            self.peak_rss = max(self.peak_rss, _kib(self.pid, "status", "VmHWM") * 1024)
            workers = [_kib(pid, "status", "VmHWM") * 1024 for pid in tree if pid != self.pid]
            self.worker_peak_rss = max([self.worker_peak_rss, *workers])


def _descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        queue += [int(child) for child in children]
    return found


def _kib(pid: int, file: str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_study(directory: Path) -> dict[str, Any]:
    """``lrsearch tune`` of one trial, one epoch over the whole dataset; its memory, time and result."""
    import yaml

    task = {"entrypoint": "streaming:make", "args": {"directory": str(directory)}}
    study = {"name": "streaming-memory", "task": task,
             "objective": {"metric": "val_accuracy", "direction": "maximize"},
             "budget": {"n_trials": 1, "epochs": 1}, "train": {"batch_size": 256, "device": "auto", "seed": 0},
             "search": {"optimizers": ["momentum"], "momentum": {"lr": 0.02, "momentum": 0.9}},
             "pruner": {"name": "none"}}
    path = directory / "study.yaml"
    path.write_text("# lrsearch tune study.yaml\n" + yaml.safe_dump(study, sort_keys=False))
    # The task module is this file; lrsearch is this checkout's.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH_DIR), str(REPO_ROOT)])}
    command = [*lrsearch_command(), "tune", str(path), "--storage", f"sqlite:///{directory / 'lrsearch.db'}",
               "--no-mlflow", "--no-progress"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    with TreeMemory(process.pid) as memory:
        _, err = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"lrsearch tune failed ({process.returncode}):\n{err[-3000:]}")
    import optuna

    trial = optuna.load_study(study_name="streaming-memory", storage=f"sqlite:///{directory / 'lrsearch.db'}").trials[0]
    return {"seconds": seconds, "peak_tree_pss": memory.peak_pss, "peak_tune_rss": memory.peak_rss,
            "peak_worker_rss": memory.worker_peak_rss, "processes": len(memory.processes),
            "state": trial.state.name, "val_accuracy": trial.value, "data": trial.user_attrs["training"]["data"],
            "peak_memory_mb": trial.user_attrs.get("peak_memory_mb")}


# -- 2. speed ---------------------------------------------------------------------------------------------------
def speed_rounds(directory: Path, rounds: int, epochs: int) -> dict[str, Any]:
    """Samples/s of the tensor path and the streamed path on the same in-memory-sized data, interleaved."""
    from lrsearch.config.spec import spec_from_dict
    from lrsearch.training.prepared import prepare
    from lrsearch.training.runner import train_trial
    from lrsearch.training.threads import configure_threads
    from lrsearch.training.trial import TrialSettings

    paths: dict[str, Any] = {}
    for name, in_memory in (("tensors", True), ("streamed", False)):
        spec = spec_from_dict({"name": f"speed-{name}", "budget": {"epochs": epochs},
                               "task": {"entrypoint": "streaming:make",
                                        "args": {"directory": str(directory), "count": SPEED_ITEMS,
                                                 "in_memory": in_memory}},
                               "train": {"batch_size": 256, "device": "auto", "seed": 0}})
        prepared = prepare(spec)
        assert prepared.data is not None and prepared.data.streamed is (not in_memory)
        paths[name] = {"prepared": prepared, "threads": configure_threads(None, prepared=prepared), "rates": []}
    settings = TrialSettings(epochs, 256, 0)
    ratios = []
    for _ in range(rounds):
        for path in paths.values():
            torch.set_num_threads(path["threads"])
            cpu = _cpu_seconds()
            outcome = train_trial(path["prepared"].task, path["prepared"].data, CONFIG, settings)
            path["rates"].append(statistics.mean(e.samples_per_second for e in outcome.history))
            used = [after - before for after, before in zip(_cpu_seconds(), cpu, strict=True)]
            path.setdefault("cpu", []).append([seconds * 1e6 / (epochs * SPEED_ITEMS) for seconds in used])
        ratios.append(paths["streamed"]["rates"][-1] / paths["tensors"]["rates"][-1])
    data = paths["streamed"]["prepared"].data
    return {"ratios": ratios, "ratio": statistics.median(ratios),
            **{name: {"samples_per_second": path["rates"], "threads": path["threads"],
                      "cpu_us_per_image": [statistics.median(column) for column in zip(*path["cpu"], strict=True)]}
               for name, path in paths.items()},
            "loader_workers": data.loader_options(iterable=False)["num_workers"]}


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by this process and by its living children (the loader workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    children = sum(_stat_cpu(pid) for pid in _descendants(os.getpid()) if pid != os.getpid()) / ticks
    return time.process_time(), children


def _stat_cpu(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=4.0, help="dataset size in GiB (at least 2 for the target)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--tmp", default=None, help="parent of the temporary directory (default: the system's)")
    args = parser.parse_args()
    info = machine_info()
    print_machine(info)
    directory = Path(tempfile.mkdtemp(prefix="lrsearch-streaming-", dir=args.tmp))
    try:
        started = time.perf_counter()
        count, size = write_dataset(directory, args.gib)
        written = time.perf_counter() - started
        print(f"wrote {count:,} images, {size / 2**30:.2f} GiB, to {directory} in {written:.0f} s")
        memory = memory_study(directory)
        print(f"memory: {memory['state']} trial over {count - VAL_ITEMS:,} images in {memory['seconds']:.0f} s "
              f"(data {memory['data']}, val_accuracy {memory['val_accuracy']:.3f})")
        speed = speed_rounds(directory, args.rounds, args.epochs)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return report(info, args, count, size, memory, speed)


def report(info: dict[str, Any], args: argparse.Namespace, count: int, size: int, memory: dict[str, Any],
           speed: dict[str, Any]) -> int:
    """Print the table and headline, write the results; the exit code: 0 when both targets are met."""
    quarter, mib = MEMORY_TARGET * size, 2**20
    memory_met = memory["peak_tree_pss"] < quarter and memory["peak_tune_rss"] < quarter and size >= 2 * 2**30
    # What the CPU work alone allows: with a core of its own for each loader worker, the streamed path is bound by
    # the busier of its training process and a worker; with no core to spare, by their sum.
    tensor_cpu, (train_cpu, loader_cpu) = speed["tensors"]["cpu_us_per_image"][0], speed["streamed"]["cpu_us_per_image"]
    spare_core = tensor_cpu / max(train_cpu, loader_cpu / max(1, speed["loader_workers"]))
    shared_core = tensor_cpu / (train_cpu + loader_cpu)
    busy = max(info["load_average_1_5_15"][0], os.getloadavg()[0]) > info["cores_usable"]
    speed_met = speed["ratio"] >= SPEED_TARGET
    speed_verdict = verdict(speed_met, machine_limited=busy and shared_core >= SPEED_TARGET)
    rows = [
        ["dataset on disk (MiB)", size / mib, "", ""],
        ["peak PSS, tune + loader workers (MiB)", memory["peak_tree_pss"] / mib, f"< {quarter / mib:.0f}",
         verdict(memory["peak_tree_pss"] < quarter)],
        ["peak RSS, tune process (MiB)", memory["peak_tune_rss"] / mib, f"< {quarter / mib:.0f}",
         verdict(memory["peak_tune_rss"] < quarter)],
        ["peak RSS, largest loader worker (MiB)", memory["peak_worker_rss"] / mib, "", ""],
        ["tensor path samples/s (median)", statistics.median(speed["tensors"]["samples_per_second"]), "", ""],
        ["streamed path samples/s (median)", statistics.median(speed["streamed"]["samples_per_second"]), "", ""],
        ["CPU-bound ratio, a core per loader worker", spare_core, "", ""],
        ["CPU-bound ratio, no core to spare", shared_core, "", ""],
        ["streamed / tensor samples/s", speed["ratio"], f">= {SPEED_TARGET}", speed_verdict],
    ]
    notes = [f"speed: {args.rounds} interleaved rounds of {args.epochs} epochs on {SPEED_ITEMS:,} images; ratios "
             f"{', '.join(f'{r:.2f}' for r in speed['ratios'])}; torch threads tensors {speed['tensors']['threads']}, "
             f"streamed {speed['streamed']['threads']} + {speed['loader_workers']} loader worker(s)",
             f"CPU per image (us, median): tensors {tensor_cpu:.0f}; streamed {train_cpu:.0f} training + "
             f"{loader_cpu:.0f} in loader workers (CPU seconds per image trained: other work inflates them far less "
             "than wall time)",
             f"memory: {memory['processes']} processes sampled every 0.2 s; trial peak_memory_mb "
             f"{memory['peak_memory_mb']}; load average at the end {[round(x, 2) for x in os.getloadavg()]}"]
    headline = (f"streaming: peak PSS {memory['peak_tree_pss'] / size:.3f}x of a {size / 2**30:.2f} GiB dataset "
                f"(target < {MEMORY_TARGET}) {verdict(memory_met)}; streamed/tensor samples/s {speed['ratio']:.2f}x "
                f"(target >= {SPEED_TARGET}) {speed_verdict}")
    print_table(["measure", "value", "target", ""], rows, headline, notes)
    path = write_results("streaming", {"machine": info, "dataset": {"images": count, "bytes": size},
                                       "memory": memory, "speed": {**speed, "cpu_bound_spare_core": spare_core,
                                                                   "cpu_bound_shared_core": shared_core},
                                       "memory_met": memory_met, "speed_met": speed_met, "headline": headline})
    print(f"wrote {path}")
    return 0 if memory_met and speed_met else 1


if __name__ == "__main__":
    sys.exit(main())
