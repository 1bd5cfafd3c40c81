"""The HUD: one cycle rendered as text for the scheduler's log. Pure: data in, text out."""

from __future__ import annotations

from collections import Counter

from .monitor import Cycle


def render(cycle: Cycle) -> str:
    """A summary line, one "N POOL workers busy: {...}" line per pool, and a backlog table."""
    from tabulate import tabulate  # imported here: workers that import sqlmon never pay for it

    pools = sorted({pool for pool, _ in cycle.counts} | {w.pool for w in cycle.workers})
    backlog = ", ".join(
        f"{pool.upper()} {_sum(cycle, pool, 'pending')} pending / "
        f"{_sum(cycle, pool, 'running')} running"
        for pool in pools
    )
    holding = [w for w in cycle.workers if w.category is not None]  # busy, or stale in a task
    active = len(holding)
    lines = [
        f"cycle {cycle.cycle} | backlog: {backlog or 'none'} | "
        f"workers: {active} active, {cycle.total('idle')} idle | "
        + ("IDLE" if cycle.idle else f"not idle: {cycle.not_idle_reason}")
    ]
    for pool in pools:
        busy = Counter(w.category for w in holding if w.pool == pool)
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


def _sum(cycle: Cycle, pool: str, what: str) -> int:
    return sum(getattr(c, what) for (p, _), c in cycle.counts.items() if p == pool)
