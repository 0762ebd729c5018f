"""What several commands share: the storage, tracking-URI and format options, the format check, and the handling
of Ctrl-C and SIGTERM."""

from __future__ import annotations

import signal
from typing import Any

import click

from lrsearch.errors import Interrupted

storage_option = click.option(
    "--storage", metavar="URL", default=None,
    help="Optuna storage: a file ending in .journal, or a database URL (sqlite:///x.db, postgresql+psycopg://...); "
         "default: $LRSEARCH_STORAGE, else lrsearch.journal here.",
)
tracking_uri_option = click.option(
    "--tracking-uri", metavar="URI", default=None,
    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's default, sqlite:///mlflow.db here).",
)
format_option = click.option("--format", "fmt", default="table", metavar="table|json", help="Output format.")


def check_format(fmt: str, allowed: tuple[str, ...]) -> None:
    """Refuse a ``--format`` the command does not have, naming the ones it has."""
    from lrsearch.errors import UsageError

    if fmt not in allowed:
        raise UsageError(f"--format {fmt!r} is not known (allowed: {', '.join(allowed)})")


def check_writable(path: str, flag: str) -> None:
    """Refuse an output file that cannot be written (its directory missing or read-only, or a directory itself)
    before any work is done, naming the flag."""
    import os

    from lrsearch.errors import UsageError

    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a directory (expected a file to write)")
    if not os.path.isdir(directory):
        raise UsageError(f"{flag} {path!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path!r} cannot be written (permission denied)")


def write_text(path: str, text: str, flag: str) -> None:
    """Write an output file; a failure is one line naming the flag (exit 2)."""
    from pathlib import Path

    from lrsearch.errors import UsageError

    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise UsageError(f"{flag} {path!r} cannot be written ({exc.strerror or exc})") from None


def stop_on_first_signal() -> None:
    """Ctrl-C and SIGTERM interrupt tune once: the running trial fails and every run is closed. A second signal
    during that clean-up is ignored rather than breaking it half way."""
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received:
            return
        received.append(signum)
        raise Interrupted() if signum == signal.SIGTERM else KeyboardInterrupt()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
