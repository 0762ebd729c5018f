"""``lrsearch ui`` for real: a server on a free port, MLflow's REST API, and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

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


@pytest.fixture
def server(tmp_path):
    path = write_study(tmp_path, tiny_study(budget={"n_trials": 3, "epochs": 1}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(cli, ["tune", str(path), "--storage", f"sqlite:///{tmp_path / 'l.db'}",
                                      "--tracking-uri", uri, "--no-progress"])
    assert result.exit_code == 0, result.output
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "lrsearch", "ui", "--tracking-uri", uri, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            _api(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny")
            break
        except OSError:
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.5)
    else:
        pytest.fail("the MLflow UI did not come up within 120 s")
    yield base, process
    process.terminate()  # lrsearch ui stops the MLflow server and its workers with it
    assert process.wait(timeout=60) == 143
    assert not _server_processes(uri), "the MLflow server outlived lrsearch ui"


def test_ui_serves_the_parent_and_child_runs(server) -> None:
    base, _ = server
    experiment = _api(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny")["experiment"]
    runs = _api(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    names = sorted(r["info"]["run_name"] for r in runs)
    assert names == ["tiny", "trial-0", "trial-1", "trial-2"]
    parent = next(r for r in runs if r["info"]["run_name"] == "tiny")
    for run in runs:
        if run["info"]["run_name"] != "tiny":
            tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
            assert tags["mlflow.parentRunId"] == parent["info"]["run_id"]
            assert run["info"]["status"] == "FINISHED"


@pytest.mark.skipif(NO_BROWSER and not os.environ.get("LRSEARCH_CI"),
                    reason="needs Debian's chromium and chromium-driver (installed by .ci/run)")
def test_experiment_page_lists_the_trial_runs(server, tmp_path) -> None:
    assert not NO_BROWSER, "chromium and chromium-driver are missing: .ci/run installs them, so CI fails here"
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _ = server
    experiment = _api(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny")["experiment"]
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1600,1200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        driver.get(f"{base}/#/experiments/{experiment['experiment_id']}/runs")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "tiny" in d.find_element(By.CSS_SELECTOR, ".ag-row").text)
        # Child runs are folded under their parent: open the parent's row, as a user would.
        driver.find_element(By.CSS_SELECTOR, '.ag-row [aria-colindex="2"] button').click()
        wait.until(lambda d: len(set(re.findall(r"trial-\d+", d.find_element(By.TAG_NAME, "body").text))) == 3)
        shown = set(re.findall(r"trial-\d+", driver.find_element(By.TAG_NAME, "body").text))
    finally:
        driver.quit()
    assert shown == {"trial-0", "trial-1", "trial-2"}
