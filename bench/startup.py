"""CLI startup time: ``lrsearch --help`` and ``lrsearch validate studies/digits-mlp.yaml`` vs ``python -c pass``.

Each command runs as a fresh subprocess ``--runs`` times (after one untimed warm-up run each, so the page cache
holds the files), the commands interleaved round-robin with a rotating order so load drift hits all alike. The
figures are the median and the minimum wall time per command. ``python -c "import torch"`` is timed too, as the
reference for what an eager import of the heavy stack would cost. A ``python -X importtime`` run of ``--help``
lists any heavy package (torch, optuna, mlflow, ...) it imports.

    python bench/startup.py [--quick] [--runs N]

Target: ``lrsearch --help`` median <= 0.5 s. Headline: --help median / ``python -c pass`` median, and the absolute.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

import _common

TARGET_S = 0.5
HEAVY = ("torch", "optuna", "mlflow", "sklearn", "scipy", "matplotlib", "sqlalchemy", "pydantic", "numpy", "yaml")


def commands() -> dict[str, list[str]]:
    lrsearch = _common.lrsearch_command()
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "lrsearch --help": [*lrsearch, "--help"],
        "lrsearch validate studies/digits-mlp.yaml": [*lrsearch, "validate", "studies/digits-mlp.yaml"],
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
    }


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LRSEARCH_DEBUG", None)
    return env


def run_once(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=_common.REPO_ROOT, env=_env(), capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return elapsed


def heavy_imports(argv: list[str]) -> list[str]:
    """Top-level heavy packages the command imports, from ``python -X importtime`` (run as ``-m lrsearch``)."""
    probe = [sys.executable, "-X", "importtime", "-m", "lrsearch", *argv]
    done = subprocess.run(probe, cwd=_common.REPO_ROOT, env=_env(), capture_output=True, text=True, check=False)
    found = set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        module = line.rsplit("|", 1)[1].strip()
        if module.split(".")[0] in HEAVY:
            found.add(module.split(".")[0])
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 runs per command instead of 15")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--strict", action="store_true", help="exit 1 on a miss even when the machine limits it")
    args = parser.parse_args(argv)
    runs = args.runs or (5 if args.quick else 15)

    info = _common.machine_info()
    _common.print_machine(info)
    cmds = commands()
    print(f"{runs} interleaved runs per command (+1 warm-up each); lrsearch = {' '.join(_common.lrsearch_command())}")
    for argv_ in cmds.values():
        run_once(argv_)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    names = list(cmds)
    for i in range(runs):
        for name in names[i % len(names):] + names[: i % len(names)]:
            times[name].append(run_once(cmds[name]))
    imports = {"--help": heavy_imports(["--help"]),
               "validate": heavy_imports(["validate", "studies/digits-mlp.yaml"])}

    base = _common.median(times["python -c pass"])
    results: dict[str, Any] = {}
    rows = []
    for name, values in times.items():
        med = _common.median(values)
        results[name] = {"median_s": med, "min_s": min(values), "max_s": max(values), "runs_s": values,
                         "ratio_to_python_pass": med / base}
        rows.append([name, med, min(values), max(values), f"{med / base:.2f}x", f"{med - base:+.3f}"])
    help_s = results["lrsearch --help"]["median_s"]
    met = help_s <= TARGET_S
    limited = not met and base >= TARGET_S / 2
    failed = not met and (args.strict or not limited)
    notes = [f"heavy packages imported by --help: {', '.join(imports['--help']) or 'none'}; "
             f"by validate: {', '.join(imports['validate']) or 'none'} (python -X importtime)"]
    if limited:
        notes.append(f"MACHINE LIMIT: the interpreter alone takes {base:.3f} s to start here: half the budget.")
    elif not met:
        notes.append(f"MISSED: --help takes {help_s:.3f} s, {help_s - base:.3f} s more than a bare interpreter.")
    path = _common.write_results("startup", {
        "bench": "startup", "machine": info, "settings": {"runs": runs, "quick": args.quick,
                                                          "lrsearch": _common.lrsearch_command()},
        "target": {"help_median_s_max": TARGET_S}, "results": results, "heavy_imports": imports,
        "headline": {"help_median_s": help_s, "ratio_to_python_pass": help_s / base,
                     "verdict": _common.verdict(met, limited)},
        "passed": not failed,
    })
    notes.append(f"results: {path}")
    headline = (f"headline: lrsearch --help = {help_s / base:.2f}x python -c pass; {help_s:.3f} s median "
                f"(min {results['lrsearch --help']['min_s']:.3f} s; target <= {TARGET_S} s, "
                f"{_common.verdict(met, limited)})")
    _common.print_table(["command", "median s", "min s", "max s", "vs pass", "extra s"], rows, headline, notes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
