"""``lrsearch ui``: the MLflow UI for a local viewer, started quietly, and the one address per study that opens on
its trials.

MLflow 3's UI opens an experiment on its GenAI pages unless the address asks for model training
(``workflowType=machine_learning``): its workflow switch decides, and the experiment's ``mlflow.experimentKind`` tag
(which lrsearch sets, see :func:`~lrsearch.tracking.recorder.experiment_id`) does not in 3.17. The address also
sorts the runs by the study's objective, and MLflow's runs table lists child runs flat (not folded under their
parent) when sorted by a metric: every trial is a row, best first, without a click.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from lrsearch.errors import TrackingError, UsageError
from lrsearch.tracking.recorder import retry
from lrsearch.tracking.runs import STUDY_ROLE

START_TIMEOUT = 180.0
"""Seconds the MLflow server gets to answer (a new SQLite store migrates its schema first)."""


@dataclass(frozen=True)
class StudyView:
    """Where a study's runs are in MLflow, and how its trials sort."""

    study: str
    experiment_id: str
    metric: str
    minimize: bool

    def address(self, base: str) -> str:
        """The experiment's runs view in model-training mode, sorted by the objective, best first."""
        order = quote(f"metrics.`{self.metric}`")
        return (f"{base}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
                f"&orderByKey={order}&orderByAsc={str(self.minimize).lower()}")


def study_views(uri: str, name: str | None = None) -> list[StudyView]:
    """The studies lrsearch recorded at ``uri`` (their parent runs), or only ``name``'s.

    Raises:
        UsageError: ``name`` has no runs at ``uri``.
    """
    from mlflow import MlflowClient

    if _missing_file(uri):
        views: dict[str, StudyView] = {}
    else:
        client = MlflowClient(uri)
        views = {v.study: v for v in _recorded(client)}
    if name is not None and name not in views:
        from lrsearch.study.storage import mask_password

        raise UsageError(f"study {name!r} has no MLflow runs at {mask_password(uri)} "
                         f"(studies there: {', '.join(sorted(views)) or 'none'})")
    return [views[name]] if name is not None else [views[k] for k in sorted(views)]


def _missing_file(uri: str) -> bool:
    """A SQLite store that does not exist yet (asking MLflow about it would create it)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(uri)
    except ArgumentError:
        return False
    return parsed.get_backend_name() == "sqlite" and bool(parsed.database) and not os.path.exists(parsed.database)


def _recorded(client: Any) -> list[StudyView]:
    """One view per study with a parent run in any experiment of ``client``'s store (the oldest run wins)."""
    experiments = [e.experiment_id for e in retry(lambda: client.search_experiments())]
    parents = retry(lambda: client.search_runs(experiments, f"tags.`lrsearch.role` = '{STUDY_ROLE}'",
                                               max_results=1000)) if experiments else []
    views: dict[str, StudyView] = {}
    for run in sorted(parents, key=lambda r: r.info.start_time):
        study = run.data.tags.get("optuna.study_name", run.info.run_name)
        views.setdefault(study, StudyView(study, run.info.experiment_id, run.data.params.get("metric", "val_loss"),
                                          run.data.params.get("direction", "minimize") == "minimize"))
    return list(views.values())


def start_server(uri: str, host: str, port: int, log: str | None) -> subprocess.Popen:
    """``mlflow server`` on ``uri`` in its own session (so it and its worker go with us), with one web worker and
    no job runner (a local viewer needs neither more workers nor MLflow's GenAI jobs); its output goes to the file
    ``log``, or to the terminal when ``log`` is None."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port",
               str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    output = open(log, "w") if log is not None else None  # the server writes it until it ends
    try:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT if output else None,
                                start_new_session=True)
    finally:
        if output is not None:
            output.close()


def log_path(port: int) -> str:
    """Where the server's output goes unless ``--verbose``."""
    return os.path.join(tempfile.gettempdir(), f"lrsearch-ui-{port}.log")


def wait_until_serving(process: subprocess.Popen, port: int, log: str | None) -> None:
    """Return once the server answers on ``port``.

    Raises:
        TrackingError: the server exited, or did not answer within :data:`START_TIMEOUT`.
    """
    deadline = time.monotonic() + START_TIMEOUT
    where = f"; its log: {log}" if log else ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TrackingError(f"the MLflow server exited with code {process.returncode}{last_line(log)}{where}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TrackingError(f"the MLflow server did not answer on port {port} within {START_TIMEOUT:.0f} s{where}")


def last_line(log: str | None) -> str:
    """``: <the log's last line>``, the server's own word on why it stopped, or nothing."""
    try:
        with open(log or "") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1]}" if lines else ""
