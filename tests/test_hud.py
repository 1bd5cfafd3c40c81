"""The HUD is a pure function of a cycle: tested against the exact text."""

from __future__ import annotations

import logging

from sqlmon.hud import emit, text
from sqlmon.judge import Count, Cycle, WorkerView


def view(wid: str, pool: str, category: str | None, state: str) -> WorkerView:
    return WorkerView(wid, pool, 1, category, state, 0.1, 0.1, 5)


def busy_cycle() -> Cycle:
    return Cycle(
        cycle=7,
        ts=1000.0,
        read_started=1000.0,
        late=False,
        workers=[
            view("gpu-1", "gpu", "VEHICLE_DETECT", "busy"),
            view("gpu-2", "gpu", "PLATE_DETECT", "busy"),
            view("gpu-3", "gpu", "OCR", "stale"),
            view("cpu-1", "cpu", "PLATE_SMOOTH", "busy"),
            view("cpu-2", "cpu", None, "idle"),
            view("cpu-3", "cpu", None, "dead"),
            view("cpu-4", "cpu", None, "stale"),
        ],
        counts={
            ("cpu", "PLATE_SMOOTH"): Count(1, 2, 1),
            ("gpu", "OCR"): Count(1, 0, 1),
            ("gpu", "PLATE_DETECT"): Count(1, 3, 1),
            ("gpu", "VEHICLE_DETECT"): Count(1, 10, 1),
        },
        events=[],
        idle=False,
        idle_since=None,
        verdict_since=None,
        not_idle_reason="15 tasks pending",
    )


def test_hud_text() -> None:
    assert text(busy_cycle()) == "\n".join(
        [
            "cycle 7 | backlog: CPU 2 pending / 1 running, GPU 13 pending / 3 running | "
            "workers: 4 active, 1 idle, 2 stale, 1 dead | not idle: 15 tasks pending",
            "1 CPU workers busy: {PLATE_SMOOTH: 1}",
            "3 GPU workers busy: {VEHICLE_DETECT: 1, PLATE_DETECT: 1, OCR: 1}",
            "stale: gpu-3, cpu-4",
            "dead: cpu-3",
            "pool    category          pending    running    busy workers",
            "------  --------------  ---------  ---------  --------------",
            "cpu     PLATE_SMOOTH            2          1               1",
            "gpu     OCR                     0          1               1",
            "gpu     PLATE_DETECT            3          1               1",
            "gpu     VEHICLE_DETECT         10          1               1",
        ]
    )


def quiet_cycle(n: int, category: str | None = None) -> Cycle:
    return Cycle(
        cycle=n,
        ts=1000.0 + n,
        read_started=1000.0 + n,
        late=False,
        workers=[view("cpu-1", "cpu", category, "busy" if category else "idle")],
        counts={},
        events=[],
        idle=category is None,
        idle_since=None,
        verdict_since=None,
        not_idle_reason=None if category is None else "1 worker busy",
    )


def test_the_compact_line_says_nothing_about_empty_pools() -> None:
    assert text(quiet_cycle(3), full=False) == (
        "cycle 3 | backlog: none | workers: 0 active, 1 idle | IDLE"
    )
    # No "0 CPU workers busy: {}": a pool with nobody busy has no detail line.
    assert text(quiet_cycle(3)) == text(quiet_cycle(3), full=False)


def test_the_detail_comes_only_when_the_shape_changes(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="sqlmon.hud"):
        seen = emit(busy_cycle(), None)
        seen = emit(busy_cycle(), seen)
        seen = emit(quiet_cycle(8, "OCR"), seen)
        seen = emit(quiet_cycle(9, "OCR"), seen)
        emit(quiet_cycle(10), seen)
    assert [r.getMessage().count("\n") for r in caplog.records] == [10, 0, 1, 0, 0]
    assert caplog.records[2].getMessage() == (
        "cycle 8 | backlog: none | workers: 1 active, 0 idle | not idle: 1 worker busy\n"
        "1 CPU workers busy: {OCR: 1}"
    )


def test_the_full_hud_is_the_hud_loggers_debug_level(caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="sqlmon.hud"):
        seen = emit(busy_cycle(), None)
        emit(busy_cycle(), seen)
    assert [r.getMessage().count("\n") for r in caplog.records] == [10, 10]
