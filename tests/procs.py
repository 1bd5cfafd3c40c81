"""Process targets for the tests: plain module-level functions, so spawn can import them."""

from __future__ import annotations

import time

from sqlmon import Heartbeat


def beat_n(hb: Heartbeat, n: int, category: str | None, result) -> None:
    """Beat `n` times through a Heartbeat built in the parent, then close; report misses."""
    for i in range(n):
        hb.beat(f"{category}-{i % 2}" if category else None)
    hb.close()
    result.put((hb.worker_id, hb.missed))


def beat_until(db: str, worker_id: str, pool: str, category: str | None, stop, every: float = 0.05):
    """A worker that beats every `every` s until `stop` is set, then closes."""
    hb = Heartbeat(db, worker_id, pool, min_interval=0.0)
    while not stop.is_set():
        hb.beat(category)
        stop.wait(every)
    hb.close()


def beat_then_hang(db: str, worker_id: str, pool: str, category: str | None) -> None:
    """Beat once, then hang without beating (a stuck worker); the test kills it."""
    hb = Heartbeat(db, worker_id, pool)
    hb.beat(category)
    time.sleep(3600)
