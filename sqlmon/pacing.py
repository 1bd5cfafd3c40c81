"""The scheduler's pacing: one step every interval, the clock and the wait passed in, so that
it is tested without processes (in the manner of the standard library's sched)."""

from __future__ import annotations

from collections.abc import Callable


def pace(
    step: Callable[[], object],
    interval: float,
    *,
    clock: Callable[[], float],
    wait: Callable[[float], None],
    stopped: Callable[[], bool],
) -> int:
    """Run `step` every `interval` s of `clock` until `stopped()`; return how many ran.

    Steps keep to a fixed schedule; one that falls behind (a slow step, or a pause of the
    whole process) is not caught up with a burst: the next runs at once and the schedule
    starts again from it.
    """
    steps = 0
    next_at = clock()
    while not stopped():
        step()
        steps += 1
        next_at += interval
        left = next_at - clock()
        if left < 0:
            next_at, left = clock(), 0.0
        if not stopped():
            wait(left)
    return steps
