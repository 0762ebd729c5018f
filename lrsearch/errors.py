"""One exception hierarchy for every error a user can see.

The CLI catches :class:`LrsearchError` once and prints ``error: <message>`` on one line, exiting with the
error's :attr:`exit_code` (2 for usage and study-file problems, 1 for runtime failures).
"""

from __future__ import annotations

__all__ = ["Interrupted", "LrsearchError", "SpecError", "StorageError", "StudyNotFoundError", "TaskError",
           "TrackingError", "TrialRuntimeError", "UsageError", "first_line", "one_line"]


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (of the driver's own error for SQLAlchemy's wrappers), else its type's
    name: what a one-line report of someone else's exception shows."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def one_line(message: str) -> str:
    """A message of several lines as one: its lines joined with "; " (the terminal shows every error on one line)."""
    return "; ".join(line.strip() for line in message.strip().splitlines() if line.strip())


class LrsearchError(Exception):
    """Base class of every user-facing lrsearch error."""

    exit_code = 1


class UsageError(LrsearchError):
    """A bad flag, argument or value given on the command line or to the Python API."""

    exit_code = 2


class SpecError(UsageError):
    """A study file that cannot be read or does not validate; carries every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = f"{source}: {self.problems[0]}"
        else:
            message = f"{len(self.problems)} problems in {source}: " + "; ".join(self.problems)
        super().__init__(message)


class StudyNotFoundError(UsageError):
    """A study name that does not exist in the storage."""


class StorageError(UsageError):
    """A storage URL that is malformed or cannot be reached."""


class TaskError(UsageError):
    """A task entrypoint that does not import, is not callable or does not return a Task."""


class TrackingError(LrsearchError):
    """The MLflow tracking store could not be opened or written."""


class TrialRuntimeError(LrsearchError):
    """Training failed at run time in a way that stops the whole command."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where a KeyboardInterrupt would be, so the running trial fails the same way as on Ctrl-C."""
