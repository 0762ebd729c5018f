"""Why a trial ended without training: the ``fail_reason`` of trials that never trained. They count as nothing run
(the budget, the portfolio) and have no MLflow run."""

from __future__ import annotations

__all__ = ["BUDGET_TAKEN", "NEVER_TRAINED", "NOT_NEEDED"]

BUDGET_TAKEN = "budget already taken by other workers"
"""The ``fail_reason`` of a trial asked for after other workers had taken the last slots of the budget."""
NOT_NEEDED = "not run: the study's budget was complete"
"""The ``fail_reason`` of a queued trial (a retry, a textbook configuration) left when the budget was complete."""
NEVER_TRAINED = (BUDGET_TAKEN, NOT_NEEDED)
