"""The HUD: the scheduler's log of what it sees. One compact line per HUD period; the per-pool
detail only when a worker's state or the set of busy categories changed, or always at the
`sqlmon.hud` logger's DEBUG level (`sqlmon run --hud full`). `hud_every=0` turns it off.

`line`, `detail` and `render` are pure: data in, text out. `emit` is the one logging call.
"""

from __future__ import annotations

import logging
from collections import Counter

from .judge import Cycle

log = logging.getLogger(__name__)

# What makes the detail worth printing again: each worker's state, and the categories held.
Shape = tuple[frozenset[tuple[str, str]], frozenset[str]]


def shape(cycle: Cycle) -> Shape:
    return (
        frozenset((w.worker_id, w.state) for w in cycle.workers),
        frozenset(w.category for w in cycle.workers if w.category is not None),
    )


def line(cycle: Cycle) -> str:
    """One line: the cycle, the backlog per pool, the workers by state, the verdict."""
    pools = _pools(cycle)
    backlog = ", ".join(
        f"{pool.upper()} {_sum(cycle, pool, 'pending')} pending / "
        f"{_sum(cycle, pool, 'running')} running"
        for pool in pools
        if _sum(cycle, pool, "pending") or _sum(cycle, pool, "running")
    )
    active = sum(1 for w in cycle.workers if w.category is not None)  # busy, or stale in a task
    workers = [f"{active} active", f"{cycle.total('idle')} idle"]
    workers += [f"{cycle.total(s)} {s}" for s in ("stale", "dead") if cycle.total(s)]
    verdict = "IDLE" if cycle.idle else f"not idle: {cycle.not_idle_reason}"
    return (
        f"cycle {cycle.cycle} | backlog: {backlog or 'none'} | "
        f"workers: {', '.join(workers)} | {verdict}"
    )


def detail(cycle: Cycle) -> str:
    """Who is busy in what per pool, the stale and dead workers, and the backlog table."""
    from tabulate import tabulate  # imported here: workers that import sqlmon never pay for it

    holding = [w for w in cycle.workers if w.category is not None]
    lines = []
    for pool in _pools(cycle):
        busy = Counter(w.category for w in holding if w.pool == pool)
        if busy:
            shown = ", ".join(f"{category}: {n}" for category, n in busy.items())
            lines.append(f"{sum(busy.values())} {pool.upper()} workers busy: {{{shown}}}")
    for state in ("stale", "dead"):
        names = [w.worker_id for w in cycle.workers if w.state == state]
        if names:
            lines.append(f"{state}: {', '.join(names)}")
    rows = [
        (pool, category, c.pending, c.running, c.busy)
        for (pool, category), c in cycle.counts.items()
    ]
    if rows:
        lines.append(
            tabulate(rows, headers=("pool", "category", "pending", "running", "busy workers"))
        )
    return "\n".join(lines)


def text(cycle: Cycle, full: bool = True) -> str:
    """The line, and with `full` the detail under it."""
    more = detail(cycle) if full else ""
    return line(cycle) + ("\n" + more if more else "")


def emit(cycle: Cycle, seen: Shape | None) -> Shape:
    """Log the HUD of `cycle`, its detail only if its shape differs from `seen`; return it."""
    now = shape(cycle)
    log.info("%s", text(cycle, full=now != seen or log.isEnabledFor(logging.DEBUG)))
    return now


def _pools(cycle: Cycle) -> list[str]:
    return sorted({pool for pool, _ in cycle.counts} | {w.pool for w in cycle.workers})


def _sum(cycle: Cycle, pool: str, what: str) -> int:
    return sum(getattr(c, what) for (p, _), c in cycle.counts.items() if p == pool)
