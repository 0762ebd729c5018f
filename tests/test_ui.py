"""``lrsearch ui`` for real: a server on a free port, MLflow's REST API, and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_study, write_study

from lrsearch.cli import cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
NO_BROWSER = CHROMIUM is None or CHROMEDRIVER is None
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_processes(uri: str) -> list[int]:
    """Pids of processes whose command line names this tracking store (the MLflow server and its workers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if uri.encode() in handle.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def directory(tmp_path_factory, empty_mlflow_store) -> Path:
    """The module's directory, with an empty MLflow store (mlflow.db) already migrated."""
    made = tmp_path_factory.mktemp("ui")
    shutil.copyfile(empty_mlflow_store, made / "mlflow.db")
    return made


@pytest.fixture(scope="module")
def server(directory):
    """A study of 4 trials recorded in MLflow, and ``lrsearch ui`` on it; yields the base URL, the process and the
    lines it printed once the server was up. Ctrl-C at the end (SIGINT to its process group, as a terminal does)."""
    path = write_study(directory, tiny_study(budget={"n_trials": 4, "epochs": 1}, sampler={"name": "random",
                                                                                           "seed": 3}))
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    result = CliRunner().invoke(cli, ["tune", str(path), "--storage", str(directory / "lrsearch.journal"),
                                      "--tracking-uri", uri, "--no-progress"])
    assert result.exit_code == 0, result.output
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "lrsearch", "ui", "--tracking-uri", uri, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + 180
    while not any("trials of tiny: " in line for line in lines):
        assert time.monotonic() < deadline, "lrsearch ui printed no address within 180 s"
        line = process.stdout.readline()
        assert line or process.poll() is None, "".join(lines)
        lines.append(line)
    yield f"http://127.0.0.1:{port}", process, lines
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: lrsearch ui stops the MLflow server and its worker with it
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == 130, rest
    assert rest.strip() == "error: interrupted"  # nothing else was printed after the addresses
    assert not _server_processes(uri), "the MLflow server outlived lrsearch ui"


def _address(lines: list[str]) -> str:
    return next(line for line in lines if line.startswith("trials of tiny: ")).split(": ", 1)[1].strip()


def test_ui_is_quiet_and_prints_the_trials_address(server, directory) -> None:
    base, _, lines = server
    assert len(lines) <= 3, lines  # a healthy start: lrsearch's own lines only, the server's go to a file
    first = lines[0]
    assert first.startswith(f"MLflow UI for sqlite:///{directory / 'mlflow.db'} at http://localhost:") and \
        "(server log: " in first, first
    log = first.split("(server log: ", 1)[1].split(")", 1)[0]
    assert "Uvicorn running" in open(log).read()
    experiment = _api(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny")["experiment"]
    assert _address(lines) == (f"http://localhost:{base.rsplit(':', 1)[1]}/#/experiments/"
                               f"{experiment['experiment_id']}/runs?workflowType=machine_learning"
                               "&orderByKey=metrics.%60val_loss%60&orderByAsc=true")
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]


def test_ui_of_an_unknown_study_is_one_line_and_starts_nothing(server, directory, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["ui", "tinny", "--tracking-uri", f"sqlite:///{directory / 'mlflow.db'}"])
    assert result.exit_code == 2
    assert result.stderr == (f"error: study 'tinny' has no MLflow runs at sqlite:///{directory / 'mlflow.db'} "
                             "(studies there: tiny)\n")
    result = CliRunner().invoke(cli, ["ui", "tiny", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 2 and "(studies there: none)" in result.stderr
    assert not (tmp_path / "none.db").exists()


def test_ui_starts_one_server_process_and_one_worker(server, directory) -> None:
    _, process, _ = server
    servers = [pid for pid in _server_processes(f"sqlite:///{directory / 'mlflow.db'}") if pid != process.pid]
    assert len(servers) == 1  # the `mlflow server` command, in a session of its own
    session = [pid for pid in _server_processes("") if _session(pid) == servers[0]]
    assert len(session) == 2, session  # it and its one uvicorn worker: no more workers, no job runner


def _session(pid: int) -> int:
    try:
        return os.getsid(pid)
    except OSError:
        return -1


def test_ui_serves_the_runs_with_best_value_at_the_improving_trial_numbers(server) -> None:
    base, _, _ = server
    experiment = _api(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny")["experiment"]
    runs = _api(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    names = sorted(r["info"]["run_name"] for r in runs)
    assert names == ["tiny", "trial-0", "trial-1", "trial-2", "trial-3"]
    parent = next(r for r in runs if r["info"]["run_name"] == "tiny")
    values = {}
    for run in runs:
        if run["info"]["run_name"] != "tiny":
            tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
            assert tags["mlflow.parentRunId"] == parent["info"]["run_id"]
            assert run["info"]["status"] == "FINISHED"
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            values[int(tags["optuna.trial_number"])] = metrics["val_loss"]  # the final value: the table sorts by it
    history = _api(base, f"/api/2.0/mlflow/metrics/get-history?run_id={parent['info']['run_id']}"
                         "&metric_key=best_value")["metrics"]
    improving, best = {}, None
    for number in sorted(values):
        if best is None or values[number] < best:
            best = improving[number] = values[number]
    assert sorted(improving) == [0, 1, 3]  # this seed's trial 2 improved nothing: no point at step 2
    assert {m["step"]: m["value"] for m in history} == pytest.approx(improving) and len(history) == len(improving)


@pytest.mark.skipif(NO_BROWSER and not os.environ.get("LRSEARCH_CI"),
                    reason="needs Debian's chromium and chromium-driver (installed by .ci/run)")
def test_the_printed_address_lists_every_trial_without_a_click(server, tmp_path) -> None:
    assert not NO_BROWSER, "chromium and chromium-driver are missing: .ci/run installs them, so CI fails here"
    from selenium import webdriver
    from selenium.webdriver.support.ui import WebDriverWait

    _, _, lines = server
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1600,1200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        driver.get(_address(lines))  # a fresh browser: no toggle was ever clicked, nothing remembered
        WebDriverWait(driver, 90).until(lambda d: len(set(re.findall(r"trial-\d+", _text(d)))) == 4)
        shown, text = re.findall(r"trial-\d+", _text(driver)), _text(driver)
    finally:
        driver.quit()
    assert set(shown) == {"trial-0", "trial-1", "trial-2", "trial-3"}
    assert "Sort: val_loss" in text  # sorted by the objective, which lists the child runs flat


def _text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text
