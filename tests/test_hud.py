"""The HUD is a pure function of a cycle: tested against the exact text."""

from __future__ import annotations

from sqlmon.hud import render
from sqlmon.monitor import Count, Cycle, WorkerView


def view(wid: str, pool: str, category: str | None, state: str) -> WorkerView:
    return WorkerView(wid, pool, 1, category, state, 0.1, 0.1, 5)


def test_hud_text() -> None:
    cycle = Cycle(
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
    assert render(cycle) == "\n".join(
        [
            "cycle 7 | backlog: CPU 2 pending / 1 running, GPU 13 pending / 3 running | "
            "workers: 4 active, 1 idle | not idle: 15 tasks pending",
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
