"""The command line and what it shows: ``commands`` (the click commands), ``tracking`` (``sync`` and ``ui``),
``options`` (the options several commands share) and ``report`` (tables, the study's answer, progress).

``lrsearch --help`` imports only click and this package's errors, so it stays instant.
"""

from lrsearch.cli.commands import cli, main

__all__ = ["cli", "main"]
