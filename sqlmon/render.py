"""Text for people and for scripts, from the plain data in queries.py and report.py.

Pure functions, tested against exact strings. Times print in local time; every string that
came from the database goes through `clean` first: a worker id may hold terminal escapes.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .durations import format_length, format_time, iso_time
from .queries import NO_RUNS, EventLine, RunLine, SnapshotLine, Status, hosts

if TYPE_CHECKING:  # report.py costs a command that only shows the status 10 ms to import
    from .report import Report

FORMATS = ("table", "json", "csv")

# C0 and C1 controls, DEL, and the bidirectional overrides that can reorder a line on screen.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(value: object) -> str:
    """A value as printable text: control characters shown as escapes, never obeyed."""
    text = "" if value is None else str(value)
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    from tabulate import tabulate  # here, not at import: `import sqlmon` must not pay for it

    rows = [list(row) for row in rows]
    if not rows:
        return "(none)"
    # Numbers align right; strings are never parsed as numbers (a worker named 007 stays 007).
    align = [
        "right"
        if all(isinstance(r[i], int | float) and not isinstance(r[i], bool) for r in rows)
        else "left"
        for i in range(len(headers))
    ]
    cleaned = [[v if isinstance(v, int | float) else clean(v) for v in row] for row in rows]
    return tabulate(cleaned, headers=list(headers), disable_numparse=True, colalign=align)


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def _plain(value: object) -> object:
    return value


def _shown(value: object) -> object:
    """A number stays a number, so that the table aligns it right; anything else is cleaned."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else clean(value)


@dataclass(frozen=True)
class Column:
    header: str  # for people
    key: str  # for scripts: the JSON key and the CSV header
    get: Callable[[Any], object]
    human: Callable[[Any], object] = _shown
    machine: Callable[[Any], object] = _plain


def _time(header: str, key: str, get: Callable[[Any], object]) -> Column:
    return Column(header, key, get, format_time, iso_time)  # type: ignore[arg-type]


def _length(header: str, key: str, get: Callable[[Any], object]) -> Column:
    return Column(header, key, get, format_length, _seconds)  # type: ignore[arg-type]


def listing(rows: Sequence[Any], columns: Sequence[Column], fmt: str) -> str:
    """Rows as a table, a JSON array of objects, or CSV with a header line."""
    if fmt == "json":
        return json.dumps([{c.key: c.machine(c.get(r)) for c in columns} for r in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([c.key for c in columns])
        for r in rows:
            writer.writerow([clean(c.machine(c.get(r))) for c in columns])
        return out.getvalue().rstrip("\n")
    return _table([c.header for c in columns], ([c.human(c.get(r)) for c in columns] for r in rows))


# -- runs, history, events --------------------------------------------------------------------

RUN_COLUMNS = (
    Column("run", "run_id", lambda r: r.run_id),
    _time("started", "started_at", lambda r: r.started_at),
    _time("ended", "ended_at", lambda r: r.ended_at),
    _length("length", "length_seconds", lambda r: r.length),
    Column("state", "state", lambda r: r.state),
    Column("end reason", "end_reason", lambda r: r.end_reason, lambda v: clean(v) if v else "-"),
    Column("snapshots", "snapshots", lambda r: r.snapshots),
    Column("scheduler", "scheduler", lambda r: f"pid {r.pid} on {r.host}"),
)


def runs_text(rows: Sequence[RunLine], fmt: str = "table") -> str:
    return listing(rows, RUN_COLUMNS, fmt)


HISTORY_COLUMNS = (
    _time("time", "ts", lambda s: s.ts),
    Column("cycle", "cycle", lambda s: s.cycle),
    Column("busy", "workers_busy", lambda s: s.workers_busy),
    Column("idle", "workers_idle", lambda s: s.workers_idle),
    Column("stale", "workers_stale", lambda s: s.workers_stale),
    Column("dead", "workers_dead", lambda s: s.workers_dead),
    Column("pending", "backlog_pending", lambda s: s.backlog_pending),
    Column("running", "backlog_running", lambda s: s.backlog_running),
    Column("verdict", "idle", lambda s: s.idle, lambda v: "idle" if v else "-", bool),
    _length("cycle time", "cycle_seconds", lambda s: s.cycle_seconds),
    Column("skipped", "writes_skipped", lambda s: s.writes_skipped),
    Column("late", "late", lambda s: s.late, lambda v: "late" if v else "-", bool),
)


def history_text(rows: Sequence[SnapshotLine], fmt: str = "table") -> str:
    return listing(rows, HISTORY_COLUMNS, fmt)


EVENT_COLUMNS = (
    _time("time", "ts", lambda e: e.ts),
    Column("run", "run_id", lambda e: e.run_id),
    Column("worker", "worker_id", lambda e: e.worker_id),
    Column("event", "event", lambda e: e.event),
    Column("category", "category", lambda e: e.category, lambda v: clean(v) if v else "-"),
    Column("pid", "pid", lambda e: e.pid, lambda v: clean(v) if v is not None else "-"),
    Column("detail", "detail", lambda e: e.detail, lambda v: clean(v) if v else ""),
)


def events_text(rows: Sequence[EventLine], fmt: str = "table") -> str:
    return listing(rows, EVENT_COLUMNS, fmt)


# -- status ------------------------------------------------------------------------------------


def status_data(st: Status) -> dict[str, object]:
    """Status for scripts: a JSON object."""
    s = st.scheduler
    return {
        "now": iso_time(st.now),
        "scheduler": None
        if s is None
        else {
            "run_id": s.run_id,
            "pid": s.pid,
            "host": s.host,
            "cycle": s.cycle,
            "heartbeat": iso_time(s.heartbeat),
            "heartbeat_age_seconds": _seconds(s.age(st.now)),
            "alive": st.verdict.alive,
            "why_not_alive": None if st.verdict.alive else st.verdict.reason,
            "run_ended": iso_time(s.ended_at),
            "end_reason": s.end_reason,
            "stop_seen": s.stop_seen,
        },
        "idle": None
        if s is None
        else {
            "idle": s.idle and st.verdict.alive,
            "idle_since": iso_time(s.idle_since),
            "not_idle_reason": s.not_idle_reason,
        },
        "workers": [
            {
                "worker_id": w.worker_id,
                "pool": w.pool,
                "pid": w.pid,
                "host": w.host,
                "category": w.category,
                "state": w.state,
                "beats": w.beats,
                "busy_seconds": _seconds(_busy_for(w, st.now)),
                "heartbeat_age_seconds": _seconds(st.now - w.last_heartbeat),
                "clock_skew_seconds": _seconds(w.clock_skew),
            }
            for w in st.workers
        ],
        "hosts": [
            {"host": h.host, "workers": h.workers, "clock_skew_seconds": _seconds(h.clock_skew)}
            for h in hosts(st.workers)
        ],
        "backlog": {
            "snapshot_time": iso_time(st.backlog_ts),
            "cycle": st.backlog_cycle,
            "counts": [
                {
                    "pool": b.pool,
                    "category": b.category,
                    "pending": b.pending,
                    "running": b.running,
                    "busy_workers": b.busy,
                }
                for b in st.backlog
            ],
        },
    }


def status_text(st: Status, fmt: str = "table") -> str:
    """The picture now: the scheduler, the idle row, the workers, the backlog."""
    if fmt == "json":
        return json.dumps(status_data(st), indent=2)
    if fmt == "csv":
        raise ValueError("status has no csv form: its sections differ in shape")
    if st.scheduler is None and not st.workers and not st.backlog:
        return NO_RUNS
    top, workers, backlog = _status_parts(st)
    return "\n".join([*top, "", *workers, "", *backlog])


def watch_page(st: Status, width: int, height: int, colour: bool = False) -> str:
    """`status` fitted to a width x height terminal: the scheduler and idle lines always on
    top, each line cut (never wrapped) to the width, the tables cut to the rows that fit with
    "+N more", stale and dead workers in red with `colour`."""
    if st.scheduler is None and not st.workers and not st.backlog:
        return _clip(NO_RUNS, width)
    top, workers, backlog = _status_parts(st)
    room = max(height - 1 - len(top), 0)  # the last line stays free for the cursor
    gaps, full = ["", ""], len(workers)
    if len(workers) + len(backlog) + 2 > room:
        gaps = []  # no blank lines when space is short
        backlog = _cut(backlog, min(len(backlog), max(room // 3, 5)))
        workers = _cut(workers, room - len(backlog))
    shown = len(workers) - 3 - (len(workers) < full)  # table rows left above "+N more"
    red = {i + 3 for i, w in enumerate(st.workers[: max(shown, 0)]) if w.state in ("stale", "dead")}
    lines = [_clip(x, width) for x in top]
    lines += gaps[:1] + [
        f"\x1b[31m{_clip(x, width)}\x1b[0m" if colour and i in red else _clip(x, width)
        for i, x in enumerate(workers)
    ]
    lines += gaps[1:] + [_clip(x, width) for x in backlog]
    return "\n".join(lines)


def _status_parts(st: Status) -> tuple[list[str], list[str], list[str]]:
    """(top lines, workers title and table, backlog title and table)."""
    s = st.scheduler
    if s is None:
        top = [f"scheduler: {NO_RUNS}"]
    else:
        age = format_length(s.age(st.now))
        if s.ended_at is not None:
            health = f"stopped at {format_time(s.ended_at)} ({clean(s.end_reason)})"
        elif st.verdict.alive:
            health = "alive"
        else:
            health = f"NOT ALIVE ({clean(st.verdict.reason)})"
        top = [
            f"scheduler: run {s.run_id}, cycle {s.cycle}, heartbeat {age} ago, "
            f"pid {s.pid} on {clean(s.host)}: {health}",
        ]
        if s.idle and st.verdict.alive:
            top.append(f"idle: yes, since {format_time(s.idle_since)}")
        else:
            top.append(f"idle: no: {clean(s.not_idle_reason) or 'the scheduler is not alive'}")
        if s.stop_seen:
            top.append("stop: seen (the pipeline asked to stop; monitoring goes on)")
    top += _hosts_line(st)
    workers = [
        f"workers ({len(st.workers)}):",
        *listing(st.workers, _worker_columns(st.now), "table").split("\n"),
    ]
    when = (
        f" (cycle {st.backlog_cycle}, {format_time(st.backlog_ts)})"
        if st.backlog_ts is not None
        else ""
    )
    backlog = [
        f"backlog{when}:",
        *_table(
            ("pool", "category", "pending", "running", "busy workers"),
            ((b.pool, b.category, b.pending, b.running, b.busy) for b in st.backlog),
        ).split("\n"),
    ]
    return top, workers, backlog


def _hosts_line(st: Status) -> list[str]:
    """One line for workers on many hosts: each host's live workers, and how far its clock is
    from the database's (shown, never used to judge). None for one host and no skew known."""
    found = hosts(st.workers)
    if len(found) < 2 and all(h.clock_skew is None for h in found):
        return []
    parts = []
    for h in found:
        clock = "" if h.clock_skew is None else f", clock {_signed(h.clock_skew)}"
        live = sum(n for state, n in h.workers.items() if state != "exited")
        parts.append(f"{clean(h.host)} {live} worker{'s' * (live != 1)}{clock}")
    return ["hosts: " + "; ".join(parts)]


def _signed(seconds: float) -> str:
    return ("+" if seconds >= 0 else "") + format_length(seconds)


def _cut(block: list[str], room: int) -> list[str]:
    """A title and its table in at most `room` lines: the first rows, then "+N more"."""
    if len(block) <= room:
        return block
    if room < 5:  # not even one row beside the title, header and rule
        return [f"{block[0]} {len(block) - 3} rows, not shown: the window is too small"][:room]
    return [*block[: room - 1], f"+{len(block) - room + 1} more"]


def _clip(line: str, width: int) -> str:
    """One line cut to `width` characters at a word's end, marked with "…"."""
    if len(line) <= width:
        return line
    cut = line[: width - 1]
    space = cut.rfind(" ")
    if space > width // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def _busy_for(w: Any, now: float) -> float | None:
    """How long the worker has held its category (category_since), None when idle."""
    return None if w.category is None or w.category_since is None else now - w.category_since


def _worker_columns(now: float) -> tuple[Column, ...]:
    return (
        Column("worker", "worker_id", lambda w: w.worker_id),
        Column("pool", "pool", lambda w: w.pool),
        Column("pid", "pid", lambda w: w.pid),
        Column("category", "category", lambda w: w.category, lambda v: clean(v) if v else "-"),
        _length("busy for", "busy_seconds", lambda w: _busy_for(w, now)),
        _length("heartbeat age", "heartbeat_age_seconds", lambda w: now - w.last_heartbeat),
        Column("state", "state", lambda w: w.state),
        Column("beats", "beats", lambda w: w.beats),
    )


# -- report ------------------------------------------------------------------------------------


def report_data(r: Report) -> dict[str, object]:
    """The report for scripts: a JSON object, seconds as numbers and times in ISO 8601."""
    c = r.cycles
    return {
        "run_id": r.run_id,
        "state": r.state,
        "started_at": iso_time(r.started_at),
        "end": iso_time(r.end),
        "end_reason": r.end_reason,
        "length_seconds": _seconds(r.length),
        "drained_at": iso_time(r.drained_at),
        "time_to_drain_seconds": _seconds(r.time_to_drain),
        "workers": [
            {
                "worker_id": w.worker_id,
                "busy_seconds": _seconds(w.busy_seconds),
                "seen_seconds": _seconds(w.seen_seconds),
                "utilisation": round(w.utilisation, 4),
                "stale_episodes": w.stale_episodes,
                "longest_gap_seconds": _seconds(w.longest_gap),
                "idle_seconds": _seconds(w.idle_seconds),
                "stale_seconds": _seconds(w.stale_seconds),
                "dead_seconds": _seconds(w.dead_seconds),
                "tasks_done": w.tasks_done,
                "failed": w.failed,
                "died_in_task": w.died_in_task,
            }
            for w in r.workers
        ],
        "categories": [
            {
                "category": k.category,
                "busy_worker_seconds": _seconds(k.busy_seconds),
                "tasks_done": k.tasks_done,
                "tasks_per_second": None if k.per_second is None else round(k.per_second, 4),
                "failed": k.failed,
                "active_seconds": _seconds(k.active_seconds),
                "task_table_done": k.task_table_done,
                "task_table_failed": k.task_table_failed,
            }
            for k in r.categories
        ],
        "backlog_peaks": [
            {"pool": p.pool, "category": p.category, "pending": p.pending, "at": iso_time(p.at)}
            for p in r.peaks
        ],
        "stale_episodes": [
            {
                "worker_id": e.worker_id,
                "started": iso_time(e.started),
                "seconds": _seconds(e.seconds),
                "outcome": e.outcome,
                "recovered": e.recovered,
            }
            for e in r.stale
        ],
        "dead_workers": [
            {"worker_id": d.worker_id, "at": iso_time(d.at), "detail": d.detail} for d in r.dead
        ],
        "cycles": {
            "count": c.cycles,
            "mean_seconds": _seconds(c.mean),
            "p95_seconds": _seconds(c.p95),
            "max_seconds": _seconds(c.max),
            "writes_skipped": c.writes_skipped,
            "late": c.late,
        },
    }


def report_text(r: Report, fmt: str = "table") -> str:
    """The post-run analysis, section by section."""
    if fmt == "json":
        return json.dumps(report_data(r), indent=2)
    if fmt == "csv":
        return listing(r.workers, _REPORT_WORKERS, "csv")
    drain = (
        f"drained in {format_length(r.time_to_drain)} (idle from {format_time(r.drained_at)})"
        if r.drained_at is not None
        else "never drained (no lasting idle verdict)"
    )
    end = {
        "ended": f"ended {format_time(r.end)} ({clean(r.end_reason)})",
        "running": f"still running (last snapshot {format_time(r.end)})",
        "vanished": f"vanished without ending (last snapshot {format_time(r.end)})",
    }[r.state]
    c = r.cycles
    gap_note = (
        f"; gaps under stale_after ({format_length(r.stale_after)}) show as -"
        if r.stale_after
        else ""
    )
    sections = [
        f"run {r.run_id}: started {format_time(r.started_at)}, {end}",
        f"length {format_length(r.length)}; {drain}",
        "",
        f"workers{gap_note}:",
        listing(r.workers, _REPORT_WORKERS, "table"),
        "",
        "categories (tasks/s over each category's own active time; the task table beside):",
        _table(
            (
                "category",
                "busy worker-s",
                "done",
                "failed",
                "active",
                "tasks/s",
                "table done",
                "table failed",
            ),
            (
                (
                    k.category,
                    f"{k.busy_seconds:.1f}",
                    "-" if k.tasks_done is None else k.tasks_done,
                    k.failed,
                    format_length(k.active_seconds),
                    "-" if k.per_second is None else f"{k.per_second:.2f}",
                    "-" if k.task_table_done is None else k.task_table_done,
                    "-" if k.task_table_failed is None else k.task_table_failed,
                )
                for k in r.categories
            ),
        ),
        "",
        "backlog peaks:",
        _table(
            ("pool", "category", "peak pending", "at"),
            ((p.pool, p.category, p.pending, format_time(p.at)) for p in r.peaks),
        ),
        "",
        f"stale episodes ({len(r.stale)}):",
        _table(
            ("worker", "started", "length", "outcome"),
            (
                (e.worker_id, format_time(e.started), format_length(e.seconds), e.outcome)
                for e in r.stale
            ),
        ),
        "",
        f"dead workers ({len(r.dead)}):",
        _table(
            ("worker", "at", "detail"),
            ((d.worker_id, format_time(d.at), d.detail or "") for d in r.dead),
        ),
        "",
        f"scheduler cycles: {c.cycles}; cycle time mean {format_length(c.mean)}, "
        f"p95 {format_length(c.p95)}, max {format_length(c.max)}; "
        f"writes skipped {c.writes_skipped}; late cycles {c.late}",
    ]
    return "\n".join(sections)


_REPORT_WORKERS = (
    Column("worker", "worker_id", lambda w: w.worker_id),
    _length("busy", "busy_seconds", lambda w: w.busy_seconds),
    _length("idle", "idle_seconds", lambda w: w.idle_seconds),
    _length("stale", "stale_seconds", lambda w: w.stale_seconds),
    _length("dead", "dead_seconds", lambda w: w.dead_seconds),
    _length("seen", "seen_seconds", lambda w: w.seen_seconds),
    Column(
        "utilisation",
        "utilisation",
        lambda w: w.utilisation,
        lambda v: f"{v:.0%}",
        lambda v: round(v, 4),
    ),
    Column("done", "tasks_done", lambda w: w.tasks_done),
    Column("failed", "failed", lambda w: w.failed),
    Column("died", "died_in_task", lambda w: w.died_in_task),
    Column("stale episodes", "stale_episodes", lambda w: w.stale_episodes),
    _length("longest beat gap", "longest_gap_seconds", lambda w: w.longest_gap),
)
