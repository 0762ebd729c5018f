#!/usr/bin/env bash
# lrsearch GPU checks, for a machine with a CUDA GPU (never CI):  bash bench/gpu_check.sh
#
# Needs a Python whose torch has CUDA, plus lrsearch's dependencies (pip install -e . there, or carry them); lrsearch
# itself is taken from this checkout. One GPU is enough; at most 10 minutes (each part has its own time limit, shown
# in brackets). Each part prints what it measured and PASS or FAIL; the exit code is the number of FAILs.
#   1. AdamW step on a ~100M-parameter model: fused vs foreach vs per-tensor loop (and lrsearch picks fused)  [60 s]
#   2. one trial in bf16 and fp16 vs fp32 (time and val_loss), same config and seed                         [60 s]
#   3. a streamed-data study on CUDA (on-disk memmap dataset), and streamed vs tensor path samples/s         [120 s]
#   4. stacked trials: --batch-trials K=8 vs 8 sequential trials                                             [60 s]
#   5. --workers auto: one worker per visible GPU, and N x M beyond the visible GPUs refused (exit 2)       [60 s]
#   6. a study through the DDP code path with NCCL at world size 1                                           [45 s]
#   7. out of memory on CUDA: an Adam trial over a memory cap fails "out of memory", the next SGD one runs    [45 s]
#   8. today's optimizers: a digits trial each on CUDA (needs lrsearch[optimizers] there), implementation, time [90 s]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export work="${OUT:-/tmp}/gpu_check"
rm -rf "$work"
mkdir -p "$work"
failures=0
summary=()

# part NAME SECONDS FUNCTION: run it under a time limit, print how long it took and PASS/FAIL.
part() {
    local name="$1" limit="$2" fn="$3" started status
    echo
    echo "=== $name (limit ${limit} s)"
    started=$(date +%s.%N)
    if timeout --kill-after=10 "$limit" bash -c "set -euo pipefail; $(declare -f "$fn"); $fn" 2>&1 \
            | tee "$work/$fn.log"; then
        status=PASS
    else
        status=FAIL
        failures=$((failures + 1))
    fi
    local took
    took=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$started" "$(date +%s.%N)")
    echo "$status $name (${took} s)"
    summary+=("$status  ${took} s  $name  $(grep -h '^RESULT' "$work/$fn.log" | sed 's/^RESULT //' | tr '\n' ' ' || true)")
}

optimizer_step() {
python3 - <<'PY'
import statistics, time, torch
from lrsearch.training.optimizers import constructor, create_optimizer

torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(24)]).cuda()  # 100.7M parameters
params = list(model.parameters())
print(f"  {sum(p.numel() for p in params) / 1e6:.1f}M parameters in {len(params)} tensors")
for p in params:
    p.grad = torch.randn_like(p) * 1e-3
auto = create_optimizer(*constructor({"optimizer": "adamw", "params": {"lr": 1e-4}}), params)[1]
print(f"  lrsearch picks {auto} for AdamW on CUDA")

def ms_per_step(**impl):
    optimizer = torch.optim.AdamW(params, lr=1e-4, **impl)
    for _ in range(3):
        optimizer.step()
    blocks = []
    for _ in range(5):
        torch.cuda.synchronize(); started = time.perf_counter()
        for _ in range(10):
            optimizer.step()
        torch.cuda.synchronize(); blocks.append((time.perf_counter() - started) / 10 * 1e3)
    return statistics.median(blocks)

times = {name: ms_per_step(**impl) for name, impl in
         (("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True}))}
for name, ms in times.items():
    print(f"  {name:8s} {ms:7.2f} ms/step  {times['loop'] / ms:5.2f}x the loop")
print(f"RESULT AdamW fused {times['loop'] / times['fused']:.2f}x, foreach {times['loop'] / times['foreach']:.2f}x "
      f"the per-tensor loop")
raise SystemExit(0 if auto == "fused" and times["fused"] < times["loop"] else 1)
PY
}

precision() {
python3 - <<'PY'
import time, torch
from torch.utils.data import TensorDataset
import lrsearch
from lrsearch.training.data import TrainData
from lrsearch.training.runner import train_trial
from lrsearch.training.trial import TrialSettings

x = torch.randn(65536, 1024, generator=torch.Generator().manual_seed(0))
y = x[:, :10].argmax(1)  # which of the first 10 features is largest: learnt within an epoch
model = lambda: torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 4096),
                                    torch.nn.GELU(), torch.nn.Linear(4096, 10))
task = lrsearch.Task(model, TensorDataset(x[:57344], y[:57344]), TensorDataset(x[57344:], y[57344:]),
                     torch.nn.functional.cross_entropy)
data = TrainData.from_task(task, "cuda")
config = {"optimizer": "adamw", "params": {"lr": 1e-3}, "schedule": {"name": "cosine"}}
seconds, outcomes = {}, {}
for _ in range(2):  # interleaved; the first round also warms up kernels
    for precision in ("fp32", "bf16", "fp16"):
        torch.cuda.synchronize(); started = time.perf_counter()
        outcomes[precision] = train_trial(task, data, config, TrialSettings(3, 1024, 0, precision=precision))
        torch.cuda.synchronize(); seconds[precision] = time.perf_counter() - started
losses = {p: o.final.get("val_loss", float("nan")) for p, o in outcomes.items()}
for p, o in outcomes.items():
    print(f"  {p}: {seconds[p]:.2f} s, val_loss {losses[p]:.4f}, diverged {o.diverged}, {o.skipped_steps} steps "
          "skipped by the loss scaler")
print(f"RESULT trial time fp32/bf16 {seconds['fp32'] / seconds['bf16']:.2f}x, fp32/fp16 "
      f"{seconds['fp32'] / seconds['fp16']:.2f}x")
close = all(abs(losses[p] - losses["fp32"]) < 0.1 * losses["fp32"] + 0.05 for p in ("bf16", "fp16"))
raise SystemExit(0 if close and losses["fp32"] < 1.5 else 1)  # chance is ln 10 = 2.3
PY
}

streamed_study() {
python3 - "$work" <<'PY'
import subprocess, sys, time
from pathlib import Path
import optuna, yaml
import streaming  # bench/streaming.py: the memmap dataset and its task

directory = Path(sys.argv[1]) / "streamed"
directory.mkdir()
count, size = streaming.write_dataset(directory, 0.5)
print(f"  wrote {count:,} images ({size / 2**30:.2f} GiB)")
study = {"name": "streamed-cuda", "task": {"entrypoint": "streaming:make", "args": {"directory": str(directory)}},
         "objective": {"metric": "val_accuracy", "direction": "maximize"}, "budget": {"n_trials": 2, "epochs": 1},
         "train": {"batch_size": 256, "device": "cuda", "precision": "bf16"}, "pruner": {"name": "none"},
         "search": {"optimizers": ["momentum", "adamw"]}}
path = directory / "study.yaml"
path.write_text("# lrsearch tune study.yaml\n" + yaml.safe_dump(study))
storage = f"sqlite:///{directory / 'lrsearch.db'}"
started = time.perf_counter()
done = subprocess.run([sys.executable, "-m", "lrsearch", "tune", str(path), "--storage", storage, "--no-mlflow",
                       "--no-progress"], capture_output=True, text=True)
print(done.stdout[-1500:], done.stderr[-1500:])
trials = optuna.load_study(study_name="streamed-cuda", storage=storage).trials if done.returncode == 0 else []
for t in trials:
    print(f"  trial {t.number}: {t.state.name}, data {t.user_attrs['training'].get('data')}, "
          f"peak_memory_mb {t.user_attrs.get('peak_memory_mb')}")
ok = len(trials) == 2 and all(t.state.name == "COMPLETE" and t.user_attrs["training"]["data"] == "streamed"
                               for t in trials)
print(f"  study: {time.perf_counter() - started:.0f} s")
speed = streaming.speed_rounds(directory, rounds=2, epochs=1)
print(f"RESULT streamed study {'ok' if ok else 'FAILED'}; streamed/tensor samples/s {speed['ratio']:.2f}x "
      f"({speed['loader_workers']} loader workers)")
raise SystemExit(0 if ok else 1)
PY
}

batched() {
python3 - <<'PY'
import time, torch
from batched import make_configs  # bench/batched.py
from lrsearch.training.batched import train_trials_batched
from lrsearch.training.data import TrainData
from lrsearch.training.runner import train_trial
from lrsearch.training.tasks import digits_mlp
from lrsearch.training.trial import TrialSettings

task = digits_mlp()
data = TrainData.from_task(task, "cuda")
configs, settings = make_configs(8), TrialSettings(10, 64, 0)
train_trials_batched(task, data, configs[:2], TrialSettings(1, 64, 0))  # warm-up
seconds = {"sequential": [], "stacked": []}
for _ in range(2):
    torch.cuda.synchronize(); started = time.perf_counter()
    alone = [train_trial(task, data, c, settings) for c in configs]
    torch.cuda.synchronize(); seconds["sequential"].append(time.perf_counter() - started)
    started = time.perf_counter()
    stacked = train_trials_batched(task, data, configs, settings)
    torch.cuda.synchronize(); seconds["stacked"].append(time.perf_counter() - started)
worst = max(abs(s.final["val_loss"] - a.final["val_loss"]) / a.final["val_loss"] for s, a in zip(stacked, alone))
best = {k: min(v) for k, v in seconds.items()}
print(f"  8 sequential trials {best['sequential']:.2f} s, stacked {best['stacked']:.2f} s "
      f"({stacked[0].implementation}); worst relative val_loss difference {worst:.1e}")
print(f"RESULT batched K=8 {best['sequential'] / best['stacked']:.2f}x the sequential trials per minute")
raise SystemExit(0 if worst < 1e-3 else 1)
PY
}

workers_auto() {
    local gpus
    gpus=$(python3 -c "from lrsearch.training.devices import visible_gpus; print(len(visible_gpus()))")
    echo "  $gpus visible GPU(s): --workers auto starts $gpus worker(s)"
    local started=$SECONDS
    python3 -m lrsearch tune studies/digits-mlp.yaml --workers auto --device cuda --n-trials 12 --epochs 5 \
        --storage "sqlite:///$work/workers.db" --no-mlflow --no-progress | tail -n 4
    local took=$((SECONDS - started))
    local code=0
    python3 -m lrsearch tune studies/digits-mlp.yaml --workers $((gpus + 1)) --device cuda \
        --storage "sqlite:///$work/refused.db" --no-mlflow --no-progress 2> "$work/refused.err" || code=$?
    echo "  --workers $((gpus + 1)): exit $code, $(cat "$work/refused.err")"
    echo "RESULT --workers auto: 12 trials in ${took} s on $gpus GPU(s); one worker too many refused with exit $code"
    [ "$code" -eq 2 ] && [ ! -e "$work/refused.db" ]
}

nccl() {
python3 - "$work" <<'PY'
import os, sys, time
from lrsearch.config.overrides import Overrides
from lrsearch.config.spec import load_spec
from lrsearch.distributed.torchrun import open_torchrun_collective
from lrsearch.study.loop import run_study
from lrsearch.study.storage import create_study, open_storage
from lrsearch.training.prepared import prepare

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29512", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
spec = Overrides(n_trials=6, epochs=5, device="cuda").apply(load_spec("studies/digits-mlp.yaml"))
prepared = prepare(spec)
opened = open_storage(f"sqlite:///{sys.argv[1]}/nccl.db")
study = create_study(spec, opened, "digits-nccl")
env = {"rank": 0, "world_size": 1, "local_rank": 0, "local_world_size": 1, "master_addr": "127.0.0.1",
       "master_port": 29512}
started = time.perf_counter()
with open_torchrun_collective(prepared, env) as collective:
    import torch.distributed as dist
    backend = dist.get_backend()
    print("  backend", backend, "world size", dist.get_world_size())
    run_study(study, opened, prepared, [], collective)
done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
print(f"RESULT NCCL world size 1: {len(done)} trials in {time.perf_counter() - started:.1f} s, best val_loss "
      f"{study.best_value:.4f}, impl {study.best_trial.user_attrs['optimizer_impl']}")
raise SystemExit(0 if len(done) == 6 and backend == "nccl" else 1)
PY
}

out_of_memory() {
python3 - "$work" <<'PY'
import sys, torch
from torch.utils.data import TensorDataset
import lrsearch
from lrsearch.config.spec import spec_from_dict
from lrsearch.study.loop import run_study
from lrsearch.study.storage import create_study, open_storage
from lrsearch.training.prepared import Prepared
from lrsearch.training.data import TrainData

# 2 x 16384^2 weights = 2.1 GB: SGD needs 4.3 GB (weights, gradients), Adam 8.6 GB. Cap this process at 6.5 GB.
total = torch.cuda.get_device_properties(0).total_memory
torch.cuda.set_per_process_memory_fraction(6.5e9 / total, 0)
x, y = torch.randn(256, 16384), torch.randint(0, 16384, (256,))
model = lambda: torch.nn.Sequential(torch.nn.Linear(16384, 16384), torch.nn.Linear(16384, 16384))
task = lrsearch.Task(model, TensorDataset(x, y), TensorDataset(x, y), torch.nn.functional.cross_entropy)
spec = spec_from_dict({"name": "oom", "task": "digits-mlp", "budget": {"n_trials": 1, "epochs": 1},
                       "train": {"device": "cuda", "batch_size": 128}, "pruner": {"name": "none"},
                       "search": {"optimizers": ["adam", "sgd"], "adam": {"lr": 1e-4}, "sgd": {"lr": 1e-3},
                                  "portfolio": "none"}})
prepared = Prepared(spec, task, TrainData.from_task(task, "cuda"), "cuda")
opened = open_storage(f"sqlite:///{sys.argv[1]}/oom.db")
study = create_study(spec, opened, "oom")
study.enqueue_trial({"optimizer": "adam"})
study.enqueue_trial({"optimizer": "sgd"})
run_study(study, opened, prepared)
for t in study.trials:
    print(f"  trial {t.number} {t.params['optimizer']}: {t.state.name} {t.user_attrs.get('fail_reason', '')} "
          f"peak_memory_mb {t.user_attrs.get('peak_memory_mb')}")
states = [(t.params["optimizer"], t.state.name) for t in study.trials]
print(f"RESULT out of memory: {states}")
ok = states == [("adam", "FAIL"), ("sgd", "COMPLETE")] and study.trials[0].user_attrs["fail_reason"] == "out of memory"
raise SystemExit(0 if ok else 1)
PY
}

new_optimizers() {
python3 - <<'PY'
import time, torch
from lrsearch.config.presets import PRESETS
from lrsearch.config.priors import TEXTBOOK
from lrsearch.config.spec import spec_from_dict
from lrsearch.training.prepared import prepare
from lrsearch.training.runner import train_trial
from lrsearch.training.trial import TrialSettings

# Each of today's optimizers trains one digits trial on CUDA (Muon's Newton-Schulz in bf16 is fast here, unlike on
# an avx2 CPU); the implementation picked and the time are printed, and each must learn (val_loss below log 10).
prepared = prepare(spec_from_dict({"name": "new", "task": "digits-mlp", "train": {"device": "cuda"}}))
failed = []
for name in ("muon", "adafactor", "lion", "soap", "schedulefree_adamw", "schedulefree_sgd", "prodigy", "adamw"):
    if PRESETS[name].problem():
        print(f"  {name}: {PRESETS[name].problem()}")
        continue
    started = time.perf_counter()
    outcome = train_trial(prepared.task, prepared.data, TEXTBOOK[name], TrialSettings(3, 64, 0))
    torch.cuda.synchronize()
    loss = outcome.final["val_loss"]
    print(f"  {name}: impl {outcome.implementation}, val_loss {loss:.4f}, {time.perf_counter() - started:.2f} s")
    if outcome.stopped or not loss < 2.302:
        failed.append(name)
print(f"RESULT today's optimizers on CUDA: {'all learn' if not failed else 'failed: ' + ', '.join(failed)}")
raise SystemExit(1 if failed else 0)
PY
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
started=$SECONDS
part "1. AdamW step, ~100M parameters: fused vs foreach vs loop" 60 optimizer_step
part "2. one trial in bf16 / fp16 vs fp32" 60 precision
part "3. streamed-data study on CUDA" 120 streamed_study
part "4. --batch-trials 8 vs 8 sequential trials" 60 batched
part "5. --workers auto" 60 workers_auto
part "6. NCCL at world size 1" 45 nccl
part "7. out of memory on CUDA" 45 out_of_memory
part "8. today's optimizers (Muon, Schedule-Free, Lion, SOAP, Prodigy, Adafactor) on CUDA" 90 new_optimizers
echo
echo "=== summary ($((SECONDS - started)) s)"
printf '%s\n' "${summary[@]}" | tee "$work/summary.txt"
exit "$failures"
