"""Shared helpers of the benchmarks: the machine description, JSON results, the table printer, statistics.

Every bench prints a table whose last line is its headline, prints the machine it ran on, writes
``bench/results/<name>.json`` (git-ignored) and exits non-zero when its target is missed.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
STUDIES_DIR = REPO_ROOT / "studies"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask), which is what a benchmark actually gets."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(torch_threads: int | None = None) -> dict[str, Any]:
    """What the numbers were measured on. Versions come from package metadata, so nothing heavy is imported."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores_usable": usable_cores(),
        "cores_total": os.cpu_count(),
        "load_average_1_5_15": load_average(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version("torch"),
        "optuna": _version("optuna"),
        "mlflow": _version("mlflow"),
        "lrsearch": _version("lrsearch"),
    }
    if torch_threads is not None:
        info["torch_threads"] = torch_threads
    return info


def print_machine(info: dict[str, Any]) -> None:
    threads = f", torch threads {info['torch_threads']}" if "torch_threads" in info else ""
    load = info["load_average_1_5_15"]
    print(f"machine: {info['cpu']}, {info['cores_usable']} usable cores (of {info['cores_total']}){threads}")
    print(f"         load average {load} (1/5/15 min; above the core count means other work competes)")
    print(f"         python {info['python']}, torch {info['torch']}, optuna {info['optuna']}, "
          f"mlflow {info['mlflow']}, lrsearch {info['lrsearch']}; {info['date']}")
    if load and load[0] > info["cores_usable"]:
        print("         WARNING: the machine is busy; absolute times are inflated, ratios measured in the same run "
              "(interleaved) are the figures to trust")


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(_jsonable(payload), indent=2, sort_keys=False) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], headline: str, notes: Sequence[str] = ()
) -> None:
    """A plain aligned table, then ``notes``, then the headline as the very last line printed."""
    print_rows(headers, rows, notes)
    print(headline)


def print_rows(headers: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()) -> None:
    """A plain aligned table, then ``notes``: a bench with several tables prints all but the last one with this."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print()
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    print()
    for note in notes:
        print(note)
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 1000 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def lrsearch_command() -> list[str]:
    """The venv's ``lrsearch`` console script (next to this interpreter), else ``python -m lrsearch``."""
    bin_dir = Path(sys.executable).parent
    script = shutil.which("lrsearch", path=str(bin_dir))
    return [script] if script else [sys.executable, "-m", "lrsearch"]


def scratch_base() -> str | None:
    """Where to put throwaway SQLite studies: /dev/shm when writable (commits without disk syncs), else the
    system's temporary directory (``None`` for :mod:`tempfile`)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def verdict(met: bool, machine_limited: bool = False) -> str:
    if met:
        return "MET"
    return "MISSED (machine limit)" if machine_limited else "MISSED"
