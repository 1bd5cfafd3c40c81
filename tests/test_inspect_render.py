"""Pure rendering of inspection data: data in, exact text out (times in UTC for the test)."""

from __future__ import annotations

import dataclasses
import json
import re
import time

import pytest

from sqlmon import render
from sqlmon import timeline as tl
from sqlmon.durations import format_length, parse_duration, parse_moment
from sqlmon.liveness import SchedulerRow, judge
from sqlmon.queries import BacklogLine, RunLine, Status, WorkerLine, health
from sqlmon.report import (
    BacklogPeak,
    CategoryReport,
    CycleStats,
    DeadWorker,
    Report,
    StaleEpisode,
    WorkerReport,
)

T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_durations_parse_and_print():
    assert parse_duration("10m") == 600
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("7d") == 7 * 86400
    for bad in ("", "10", "m", "10x", "ten minutes", "-5m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_moment("10m", T0) == T0 - 600
    assert parse_moment("2027-01-15 07:00", T0) == T0 - 3600
    assert parse_moment("07:30", T0) == T0 - 1800
    assert parse_moment("2027-01-15T08:00:00+01:00", T0) == T0 - 3600
    with pytest.raises(ValueError):
        parse_moment("yesterdayish", T0)
    assert [format_length(s) for s in (0.25, 12.34, 65.25, 7380, 93600, None)] == [
        "250 ms",
        "12.3 s",
        "1 m 05 s",
        "2 h 03 m",
        "1 d 02 h",
        "-",
    ]


def test_control_characters_are_shown_never_obeyed():
    assert render.clean("gpu-\x1b[31m1\x07\u202e") == "gpu-\\x1b[31m1\\x07\\u202e"
    assert render.clean(None) == ""


RUNS = [
    RunLine(1, T0, T0 + 65.25, "terminate", T0 + 65, 66, 101, "vm", "ended"),
    RunLine(2, T0 + 100, None, None, T0 + 130.5, 31, 102, "vm", "vanished"),
]


def test_runs_table_json_and_csv():
    assert render.runs_text(RUNS) == "\n".join(
        [
            "  run  started                ended                  length    state     end reason      snapshots  scheduler",  # noqa: E501
            "-----  ---------------------  ---------------------  --------  --------  ------------  -----------  -------------",  # noqa: E501
            "    1  2027-01-15 08:00:00.0  2027-01-15 08:01:05.2  1 m 05 s  ended     terminate              66  pid 101 on vm",  # noqa: E501
            "    2  2027-01-15 08:01:40.0  -                      30.5 s    vanished  -                      31  pid 102 on vm",  # noqa: E501
        ]
    )
    assert json.loads(render.runs_text(RUNS, "json"))[1] == {
        "run_id": 2,
        "started_at": "2027-01-15T08:01:40.000+00:00",
        "ended_at": None,
        "length_seconds": 30.5,
        "state": "vanished",
        "end_reason": None,
        "snapshots": 31,
        "scheduler": "pid 102 on vm",
    }
    assert render.runs_text(RUNS, "csv") == "\n".join(
        [
            "run_id,started_at,ended_at,length_seconds,state,end_reason,snapshots,scheduler",
            "1,2027-01-15T08:00:00.000+00:00,2027-01-15T08:01:05.250+00:00,65.25,ended,terminate,66,pid 101 on vm",  # noqa: E501
            "2,2027-01-15T08:01:40.000+00:00,,30.5,vanished,,31,pid 102 on vm",
        ]
    )


SCHED = SchedulerRow(
    3, 55, None, "vm", 1.0, T0 + 9.5, 12, False, None, None, "2 tasks pending in OCR", False,
    1, None, None, None,
)  # fmt: skip


def _at(now: float, sched: SchedulerRow | None, workers: list, backlog=(), ts=None, cycle=None):
    # The judge as status() applies it, on a host that is not the scheduler's.
    verdict = judge(sched, now, host="elsewhere")
    return Status(now, sched, workers, list(backlog), ts, cycle, verdict)


def _status() -> Status:
    workers = [
        WorkerLine("gpu-1", "gpu", 7, "vm", "OCR", T0 + 9.75, "busy", 40, T0 + 6.5),
        WorkerLine("\x1b[2Jevil", "cpu", 8, "vm", None, T0 - 5, "stale", 3),
    ]
    return _at(T0 + 10, SCHED, workers, [BacklogLine("gpu", "OCR", 2, 1, 1)], T0 + 9.5, 12)


def test_status_text():
    assert render.status_text(_status()) == "\n".join(
        [
            "scheduler: run 3, cycle 12, heartbeat 500 ms ago, pid 55 on vm: alive",
            "idle: no: 2 tasks pending in OCR",
            "",
            "workers (2):",
            "worker       pool      pid  category    busy for    heartbeat age    state      beats",
            "-----------  ------  -----  ----------  ----------  ---------------  -------  -------",
            "gpu-1        gpu         7  OCR         3.5 s       250 ms           busy          40",
            "\\x1b[2Jevil  cpu         8  -           -           15.0 s           stale          3",  # noqa: E501
            "",
            "backlog (cycle 12, 2027-01-15 08:00:09.5):",
            "pool    category      pending    running    busy workers",
            "------  ----------  ---------  ---------  --------------",
            "gpu     OCR                 2          1               1",
        ]
    )
    data = json.loads(render.status_text(_status(), "json"))
    assert data["scheduler"]["alive"] is True
    assert data["workers"][1]["worker_id"] == "\x1b[2Jevil"  # JSON escapes it by itself
    assert "\x1b" not in render.status_text(_status(), "json")


def test_watch_page_fits_an_80x15_terminal():
    workers = [
        WorkerLine(f"cpu-{i}", "cpu", 10 + i, "vm", "OCR", T0 + 9.75, "busy", 40, T0 + 6.5)
        for i in range(1, 13)
    ]
    workers[1] = WorkerLine("cpu-2", "cpu", 12, "vm", None, T0 - 5, "stale", 3)
    sched = dataclasses.replace(SCHED, not_idle_reason="12 tasks running in OCR; " * 6)
    backlog = [BacklogLine("cpu", f"C{i}", 2, 1, 1) for i in range(4)]
    page = render.watch_page(_at(T0 + 10, sched, workers, backlog, T0 + 9.5, 12), 80, 15)
    assert page.split("\n") == [
        "scheduler: run 3, cycle 12, heartbeat 500 ms ago, pid 55 on vm: alive",
        "idle: no: 12 tasks running in OCR; 12 tasks running in OCR; 12 tasks running…",
        "workers (12):",
        "worker    pool      pid  category    busy for    heartbeat age    state…",
        "--------  ------  -----  ----------  ----------  ---------------  -------…",
        "cpu-1     cpu        11  OCR         3.5 s       250 ms           busy…",
        "cpu-2     cpu        12  -           -           15.0 s           stale…",
        "cpu-3     cpu        13  OCR         3.5 s       250 ms           busy…",
        "+9 more",
        "backlog (cycle 12, 2027-01-15 08:00:09.5):",
        "pool    category      pending    running    busy workers",
        "------  ----------  ---------  ---------  --------------",
        "cpu     C0                  2          1               1",
        "+3 more",
    ]
    coloured = render.watch_page(_at(T0 + 10, sched, workers, backlog, T0 + 9.5, 12), 80, 15, True)
    assert coloured.split("\n")[6] == f"\x1b[31m{page.split(chr(10))[6]}\x1b[0m"
    assert coloured.count("\x1b[31m") == 1


def test_health_says_why_in_one_line():
    assert health(_status()) == (False, "\x1b[2Jevil is stale")
    st = _status()
    ok = _at(st.now, st.scheduler, st.workers[:1], st.backlog, st.backlog_ts, st.backlog_cycle)
    assert health(ok) == (True, "ok: run 3 cycle 12, heartbeat 0.5 s ago, 1 worker(s) alive")
    late = _at(T0 + 20, st.scheduler, [])
    assert health(late) == (
        False,
        "the scheduler's heartbeat is 10.5 s old (fresh means under 3.0 s): run 3",
    )
    assert health(_at(T0, None, [])) == (
        False,
        "no scheduler has run on this database",
    )


TIMELINE = tl.Timeline(
    4,
    T0,
    T0 + 10,
    [
        tl.Lane(
            "gpu-1",
            [
                tl.Stretch(T0, T0 + 4, "idle"),
                tl.Stretch(T0 + 4, T0 + 8, "OCR"),
                tl.Stretch(T0 + 8, T0 + 10, "PLATE_DETECT"),
            ],
        ),
        tl.Lane(
            "gpu-2",
            [
                tl.Stretch(T0 + 2, T0 + 5, "OCR"),
                tl.Stretch(T0 + 5, T0 + 10, "OCR"),
                tl.Stretch(T0 + 6, T0 + 9, "stale"),
            ],
        ),
    ],
    ["OCR", "PLATE_DETECT"],
    {"OCR": [(T0, 3), (T0 + 5, 1)]},
)


def test_timeline_text_gantt():
    assert tl.text(TIMELINE, 40) == "\n".join(
        [
            "run 4: 2027-01-15 08:00:00.0 to 2027-01-15 08:00:10.0 (10.0 s), one column = 323 ms",
            "gpu-1  |............OOOOOOOOOOOOOPPPPPP|",
            "gpu-2  |      OOOOOOOOOOOOO!!!!!!!!OOOO|",
            "legend: O OCR, P PLATE_DETECT, . idle, ! stale, blank: not running",
        ]
    )
    coloured = tl.text(TIMELINE, 40, colour=True).splitlines()[1]
    assert coloured == "gpu-1  |............\x1b[32mOOOOOOOOOOOOO\x1b[0m\x1b[34mPPPPPP\x1b[0m|"


def test_timeline_symbols_are_unique_letters():
    assert tl.symbols(["VEHICLE_DETECT", "PLATE_DETECT", "OCR", "PLATE_SMOOTH", "SUMMARY"]) == {
        "OCR": "O",
        "PLATE_DETECT": "P",
        "PLATE_SMOOTH": "L",
        "SUMMARY": "S",
        "VEHICLE_DETECT": "V",
    }


def test_timeline_html_is_self_contained():
    lane = tl.Lane("<b>&x", [tl.Stretch(T0, T0 + 10, "OCR")])
    page = tl.html(tl.Timeline(1, T0, T0 + 10, [lane], ["OCR"], {"OCR": [(T0, 2)]}))
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page and "<polyline" in page
    assert "&lt;b&gt;&amp;x" in page and "<b>&x" not in page
    for external in ("http:", "https:", "src=", "href=", "@import", "url("):
        assert external not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_report_text():
    rep = Report(
        5,
        "ended",
        T0,
        T0 + 100,
        "terminate",
        T0 + 80,
        3.0,
        [WorkerReport("gpu-1", 50, 100, 1, 7.5, 45.5, 4.5, 0, 40, 2, 0)],
        [CategoryReport("OCR", 50, 40, 0.5, 2, 80, 41, 1)],
        [BacklogPeak("gpu", "OCR", 12, T0 + 3)],
        [StaleEpisode("gpu-1", T0 + 20, 4.5, "recovered")],
        [DeadWorker("cpu-2", T0 + 50, "pid 9 is gone")],
        CycleStats(100, 0.002, 0.005, 0.01, 1, 0),
    )
    assert render.report_text(rep) == "\n".join(
        [
            "run 5: started 2027-01-15 08:00:00.0, ended 2027-01-15 08:01:40.0 (terminate)",
            "length 1 m 40 s; drained in 1 m 20 s (idle from 2027-01-15 08:01:20.0)",
            "",
            "workers; gaps under stale_after (3.0 s) show as -:",
            "worker    busy    idle    stale    dead    seen      utilisation      done    failed"
            "    died    stale episodes  longest beat gap",
            "--------  ------  ------  -------  ------  --------  -------------  ------  --------"
            "  ------  ----------------  ------------------",
            "gpu-1     50.0 s  45.5 s  4.5 s    0 ms    1 m 40 s  50%                40         2"
            "       0                 1  7.5 s",
            "",
            "categories (tasks/s over each category's own active time; the task table beside):",
            "category    busy worker-s      done    failed  active    tasks/s      table done"
            "    table failed",
            "----------  ---------------  ------  --------  --------  ---------  ------------"
            "  --------------",
            "OCR         50.0                 40         2  1 m 20 s  0.50                 41"
            "               1",
            "",
            "backlog peaks:",
            "pool    category      peak pending  at",
            "------  ----------  --------------  ---------------------",
            "gpu     OCR                     12  2027-01-15 08:00:03.0",
            "",
            "stale episodes (1):",
            "worker    started                length    outcome",
            "--------  ---------------------  --------  ---------",
            "gpu-1     2027-01-15 08:00:20.0  4.5 s     recovered",
            "",
            "dead workers (1):",
            "worker    at                     detail",
            "--------  ---------------------  -------------",
            "cpu-2     2027-01-15 08:00:50.0  pid 9 is gone",
            "",
            "scheduler cycles: 100; cycle time mean 2 ms, p95 5 ms, max 10 ms; writes skipped 1; "
            "late cycles 0",
        ]
    )
    data = json.loads(render.report_text(rep, "json"))
    assert data["stale_episodes"] == [
        {
            "worker_id": "gpu-1",
            "started": "2027-01-15T08:00:20.000+00:00",
            "seconds": 4.5,
            "outcome": "recovered",
            "recovered": True,
        }
    ]
    assert data["time_to_drain_seconds"] == 80.0
    assert data["workers"][0]["busy_seconds"] == 50.0 and data["workers"][0]["utilisation"] == 0.5
    assert (data["workers"][0]["stale_seconds"], data["workers"][0]["failed"]) == (4.5, 2)
    assert data["categories"][0] == {
        "category": "OCR",
        "busy_worker_seconds": 50.0,
        "tasks_done": 40,
        "tasks_per_second": 0.5,
        "failed": 2,
        "active_seconds": 80.0,
        "task_table_done": 41,
        "task_table_failed": 1,
    }
    assert render.report_text(rep, "csv").splitlines() == [
        "worker_id,busy_seconds,idle_seconds,stale_seconds,dead_seconds,seen_seconds,"
        "utilisation,tasks_done,failed,died_in_task,stale_episodes,longest_gap_seconds",
        "gpu-1,50.0,45.5,4.5,0.0,100.0,0.5,40,2,0,1,7.5",
    ]


def test_timeline_page_scales_marks_the_drain_and_brings_the_backlog_back_to_zero():
    lanes = [tl.Lane(w, [tl.Stretch(T0, T0 + 5, "OCR")]) for w in ("cpu-2", "cpu-10")]
    page = tl.html(
        tl.Timeline(1, T0, T0 + 10, lanes, ["OCR"], {"OCR": [(T0 + 1, 4), (T0 + 2, 3)]}, T0 + 8)
    )
    assert 'viewBox="0 0 1250 ' in page and "width:100%" in page  # no fixed width, no scroll
    assert "time (local)" in page and "pending tasks" in page
    assert 'class="drain"' in page and "drained (idle to the end) after 8.0 s" in page
    (points,) = re.findall(r'<polyline[^>]* points="([^"]+)"', page)
    pairs = [tuple(map(float, p.split(","))) for p in points.split()]
    zero = pairs[0][1]  # it rises from 0 at its first sample...
    assert pairs[-1] == (1180.0, zero)  # ...and is back at 0 at the run's end, not mid-air
