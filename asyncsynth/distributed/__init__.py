"""Past one process (extras: ``asyncsynth[redis]``, ``asyncsynth[ray]``).

- shared budgets: every process naming the same endpoint key shares its RPM, TPM and
  concurrency (:class:`SharedLimits` over a Redis server, or the Ray executor's actor);
- the Ray executor: ``asyncsynth run --executor ray`` spreads a job over a Ray cluster.

Each extra is imported only where it is used.
"""

from .budgets import Admission, Shape, SharedBudget, SharedLimits, budget_key
from .store import MemoryStore, StoreUnavailable

__all__ = [
    "Admission",
    "MemoryStore",
    "Shape",
    "SharedBudget",
    "SharedLimits",
    "StoreUnavailable",
    "budget_key",
]
