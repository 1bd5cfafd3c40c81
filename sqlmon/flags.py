"""Waiting on the pipeline's shutdown flags (multiprocessing events) from a killable process."""

from __future__ import annotations

from typing import Any


def wait(event: Any, timeout: float) -> bool:
    """Wait up to `timeout` s for `event` to be set; True when it is set.

    multiprocessing.Event.wait registers the caller as a sleeper on a condition, and set()
    then waits for every registered sleeper to wake: a process killed while it waits (SIGKILL
    is how a stuck scheduler or worker dies) leaves set() in the main process blocked for ever.
    Waiting on the event's own semaphore leaves nobody to wait for; only a kill in the few
    instructions between taking and giving back the semaphore can hide the flag, until the
    next set().
    """
    flag = getattr(event, "_flag", None)
    if flag is None or not hasattr(flag, "acquire"):
        return bool(event.wait(timeout))  # a threading.Event or a look-alike
    if flag.acquire(True, max(0.0, timeout)):
        flag.release()  # the flag stays set for everyone else
        return True
    return False
