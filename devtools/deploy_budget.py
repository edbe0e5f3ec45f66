"""deploy.sh's budgets: database connections per function, and the rates of the fan-out's task queue.

Invariants: every function gets at least one connection and instances x concurrency never exceed its
share; the shares, counted over every registered target (even those not deployed now), never exceed
``--db-connections``; the queue never asks more of the token endpoint than its budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared import targets
from shared.tokens.scheduled import SLICE_SIZE

# The scheduled run's fan-out: each Cloud Task refreshes one slice of the scheduled run's SLICE_SIZE
# tokens with refresh_tokens' REFRESH_CONCURRENCY workers.
SLICE_TOKENS = SLICE_SIZE


class BudgetError(Exception):
    """The budget cannot be split as asked; the message says why."""


@dataclass(frozen=True)
class Size:
    """How one function is deployed: what an instance may hold and how many of them run."""

    memory: str
    timeout: str
    instances: int
    concurrency: int
    share: int  # the budget's connections set aside for it
    used: int  # the connections it can hold at once


def refresh_share(budget: int) -> int:
    """The scheduled-run target's share: a quarter of the budget, at least 2 (a run, a per-user call)."""
    return max(2, budget // 4)


def _shares(budget: int, registered: Sequence[targets.Target]) -> dict[str, int]:
    share = refresh_share(budget)
    rest = budget - share
    weighted = [t for t in registered if not is_scheduled(t)]
    total = sum(t.db_weight for t in weighted) or 1
    shares = {t.name: rest * t.db_weight // total for t in weighted}
    if weighted:
        # What the rounding leaves goes to the lightest targets, one connection each, from the last of
        # them in the registry backwards (with one lightest target, as before: all of it to that one).
        lightest = min(t.db_weight for t in weighted)
        takers = [t for t in weighted if t.db_weight == lightest][::-1]
        for n in range(rest - sum(shares.values())):
            shares[takers[n % len(takers)].name] += 1
    shares.update({t.name: share for t in registered if is_scheduled(t)})
    return shares


def is_scheduled(target: targets.Target) -> bool:
    """Whether the target is the one Cloud Scheduler drives (refresh_tokens)."""
    return targets.SCHEDULER in target.roles


def minimum_budget(registered: Sequence[targets.Target]) -> int:
    """The smallest ``--db-connections`` that gives every registered function at least one connection."""
    budget = 1
    while min(_shares(budget, registered).values(), default=1) < 1 or budget < refresh_share(budget) + 1:
        budget += 1
    return budget


def plan_sizes(budget: int, registered: Sequence[targets.Target]) -> dict[str, Size]:
    """Cut the budget into instances x concurrency per function, counted over every registered one.

    The scheduled-run target gets :func:`refresh_share` as 2 instances x concurrency 1: the run is one long
    request whose workers each hold a connection (the share less one), and the connection left serves a
    per-user refresh on the second instance. Every other share becomes the instances x concurrency pair,
    concurrency between half the target's ceiling and the ceiling, that uses most of it (ties: fewer
    instances); a share below half the ceiling becomes 1 instance x share.

    Raises:
        BudgetError: the budget cannot give every function a connection.
    """
    need = minimum_budget(registered)
    if budget < need:
        raise BudgetError(
            f"--db-connections {budget} is too small: the {len(registered)} functions need at least {need} "
            f"(refresh_tokens {refresh_share(need)}, one each for the others); raise the database's budget"
        )
    sizes = {}
    for target, share in ((t, _shares(budget, registered)[t.name]) for t in registered):
        if is_scheduled(target):
            instances, concurrency, used = 2, 1, share
        elif share < (target.max_concurrency + 1) // 2:
            instances, concurrency = 1, share
            used = share
        else:
            best = (0, 1, 1)
            for c in range(target.max_concurrency, (target.max_concurrency + 1) // 2 - 1, -1):
                if share // c * c > best[0]:
                    best = (share // c * c, share // c, c)
            used, instances, concurrency = best
        sizes[target.name] = Size(target.memory, target.timeout, instances, concurrency, share, used)
    total = sum(s.used for s in sizes.values())
    if total > budget:  # pragma: no cover - a bug in the arithmetic above, never a user error
        raise BudgetError(f"bug: the plan uses {total} connections, over {budget}")
    return sizes


@dataclass(frozen=True)
class Queue:
    """The Cloud Tasks queue's limits, from the budgets of the token endpoint and the database."""

    max_dispatches_per_second: float
    max_concurrent_dispatches: int


def queue_limits(refresh: Size, token_endpoint_rate: int) -> Queue:
    """Limits for the fan-out over refresh_tokens.

    A slice in flight holds one refresh_tokens instance and its workers' connections (the share less one),
    so one slice at a time per instance the scheduled run leaves free keeps the database within the
    share; slices start no faster than the token-endpoint budget refreshes their tokens.
    """
    concurrent = max(1, refresh.instances - 1)
    return Queue(round(max(token_endpoint_rate, 1) / SLICE_TOKENS, 3), concurrent)
