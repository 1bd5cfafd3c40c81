"""A run's timeline: per worker, its busy / idle / stale stretches, and the backlog per category
over time. `load` reads them; `text` draws a Gantt chart for a terminal and `html` one
self-contained page (inline SVG: no network, no external assets). The renderers are pure.
"""

from __future__ import annotations

import html as htmlmod
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from . import config
from .durations import format_length, format_time
from .eventlog import stretch_workers
from .queries import natural
from .render import clean
from .report import drained_at, troubles
from .schema import snapshot_counts, snapshots
from .stretches import Window, clip
from .usage import open_stretches

IDLE, STALE = "idle", "stale"
IDLE_MARK, STALE_MARK = ".", "!"


@dataclass(frozen=True)
class Stretch:
    start: float
    end: float
    key: str  # a category (busy), IDLE or STALE


@dataclass(frozen=True)
class Lane:
    worker_id: str
    stretches: list[Stretch]


@dataclass(frozen=True)
class Timeline:
    run_id: int
    start: float
    end: float
    lanes: list[Lane]
    categories: list[str]
    backlog: dict[str, list[tuple[float, int]]]  # category -> (ts, pending), downsampled
    drained_at: float | None = None  # the idle verdict that held to the end, if one did


def load(
    conn: Connection,
    run_id: int,
    start: float,
    end: float,
    points: int = config.TIMELINE_POINTS,
    resolution: int = config.TIMELINE_RESOLUTION,
) -> Timeline:
    """The run's stretches, clipped to [start, end] as worker_intervals clips them, and at most
    `points` backlog samples per category (the peak of each slice of time). Aggregated in SQL:
    stretches shorter than 1/`resolution` of the run come summed per slice, so a day of
    stretches stays a few rows per worker."""
    step = max(end - start, 1e-9) / resolution
    lanes: dict[str, list[Stretch]] = {}
    for worker in stretch_workers(conn):
        for category, first, seconds in conn.execute(
            _LANE_SQL, {"w": worker, "start": start, "end": end, "step": step}
        ):
            stop = min(first + seconds, end)
            if stop > first:
                key = category if category is not None else IDLE
                lanes.setdefault(worker, []).append(Stretch(first, stop, key))
    window = Window(run_id, start, end)
    for o in open_stretches(conn, window):
        part = clip(o.started, o.ended, window)
        if part is not None and part[1] > part[0]:
            key = o.category if o.category is not None else IDLE
            lanes.setdefault(o.worker_id, []).append(Stretch(*part, key))
    for ep in troubles(conn, run_id, end)[0]:
        lanes.setdefault(ep.worker_id, []).append(
            Stretch(ep.started, ep.started + ep.seconds, STALE)
        )
    categories = sorted({s.key for ss in lanes.values() for s in ss} - {IDLE, STALE})
    c, s = snapshot_counts.c, snapshots.c
    span = max(end - start, 1e-9)
    bucket = sa.cast((s.ts - start) * points / span, sa.Integer)
    backlog: dict[str, list[tuple[float, int]]] = {}
    for category, ts, pending in conn.execute(
        sa.select(c.category, sa.func.min(s.ts), sa.func.max(c.pending))
        .select_from(sa.join(snapshot_counts, snapshots, s.id == c.snapshot_id))
        .where(s.run_id == run_id)
        .group_by(c.category, bucket)
        .order_by(c.category, sa.func.min(s.ts))
    ):
        backlog.setdefault(category, []).append((float(ts), int(pending)))
    return Timeline(
        run_id,
        start,
        end,
        [
            Lane(w, sorted(ss, key=lambda x: x.start))
            for w, ss in sorted(lanes.items(), key=lambda kv: natural(kv[0]))
        ],
        categories,
        backlog,
        drained_at(conn, run_id),
    )


# One worker's stretches that overlap [start, end], clipped to it: each one at least a slice
# long on its own (its id is its group), shorter ones summed per slice. Read by seeks on the
# (worker_id, started) index from the stretch open at `start`.
_LANE_SQL = sa.text(
    """
    SELECT category, min(max(started, :start)), sum(min(ended, :end) - max(started, :start))
    FROM worker_stretches
    WHERE worker_id = :w AND started < :end AND ended > :start
      AND started >= COALESCE((SELECT started FROM worker_stretches WHERE worker_id = :w
                               AND started <= :start ORDER BY started DESC LIMIT 1), :start)
    GROUP BY category,
             CASE WHEN min(ended, :end) - max(started, :start) >= :step THEN -1 - id
                  ELSE CAST((max(started, :start) - :start) / :step AS INTEGER) END
    """
)


def symbols(categories: Iterable[str]) -> dict[str, str]:
    """One letter per category: its first unused letter, else a digit."""
    out: dict[str, str] = {}
    for category in sorted(categories):
        letters = [ch.upper() for ch in category if ch.isalnum()] + list("0123456789")
        out[category] = next((ch for ch in letters if ch not in out.values()), "?")
    return out


def columns(lane: Lane, start: float, end: float, width: int) -> list[str | None]:
    """What fills most of each of `width` equal slices of [start, end]; stale beats busy on a
    tie (a stale worker still holds its category); None where the worker did not exist."""
    step = (end - start) / width if end > start else 1.0
    cover: list[dict[str, float]] = [{} for _ in range(width)]
    for s in lane.stretches:
        a, b = max(s.start, start), min(s.end, end)
        if b <= a:
            continue
        first, last = int((a - start) / step), min(width - 1, int((b - start) / step))
        for i in range(first, last + 1):
            lo, hi = start + i * step, start + (i + 1) * step
            overlap = min(b, hi) - max(a, lo)
            if overlap > 0 or (a == b == lo):
                cover[i][s.key] = cover[i].get(s.key, 0.0) + overlap
    return [max(c, key=lambda k: (c[k], k == STALE)) if c else None for c in cover]


# ANSI colours for categories, in symbol order; stale is red on white, idle uncoloured.
_COLOURS = ("32", "34", "35", "36", "33", "92", "94", "95", "96", "93")
_RESET = "\x1b[0m"


def text(tl: Timeline, width: int = 80, colour: bool = False) -> str:
    """A Gantt chart `width` characters wide: one line per worker, a letter per category."""
    marks = symbols(tl.categories)
    paint = {cat: _COLOURS[i % len(_COLOURS)] for i, cat in enumerate(sorted(marks))}
    names = {lane.worker_id: clean(lane.worker_id)[:20] for lane in tl.lanes}
    label = max([len(n) for n in names.values()] + [6])
    bar = max(10, width - label - 3)
    step = (tl.end - tl.start) / bar if tl.end > tl.start else 0.0
    lines = [
        f"run {tl.run_id}: {format_time(tl.start)} to {format_time(tl.end)} "
        f"({format_length(tl.end - tl.start)}), one column = {format_length(step)}"
    ]
    for lane in tl.lanes:
        cells = columns(lane, tl.start, tl.end, bar)
        out, i = [], 0
        while i < len(cells):
            j = i
            while j < len(cells) and cells[j] == cells[i]:
                j += 1
            key = cells[i]
            mark = (
                " "
                if key is None
                else IDLE_MARK
                if key == IDLE
                else (STALE_MARK if key == STALE else marks[key])
            )
            run = mark * (j - i)
            if colour and key is not None and key != IDLE:
                code = "1;31;47" if key == STALE else paint[key]
                run = f"\x1b[{code}m{run}{_RESET}"
            out.append(run)
            i = j
        lines.append(f"{names[lane.worker_id]:<{label}} |{''.join(out)}|")
    if not tl.lanes:
        lines.append("(no worker events in this run)")
    legend = [f"{marks[c]} {clean(c)}" for c in sorted(marks, key=marks.__getitem__)]
    legend += [f"{IDLE_MARK} idle", f"{STALE_MARK} stale", "blank: not running"]
    lines.append("legend: " + ", ".join(legend))
    return "\n".join(lines)


# -- the HTML page -------------------------------------------------------------------------------

_HEX = (
    "#2e7d32",
    "#1565c0",
    "#6a1b9a",
    "#00838f",
    "#ef6c00",
    "#9e9d24",
    "#4527a0",
    "#ad1457",
    "#00695c",
    "#5d4037",
)
_PLOT, _LEFT, _RIGHT, _LANE, _CHART = 1000, 180, 70, 18, 220  # drawing units, not pixels
_TICKS = 6


def html(tl: Timeline) -> str:
    """One self-contained page: the Gantt chart of every worker's stretches and the backlog per
    category, as inline SVG scaled to the window (no network, no external assets)."""
    esc = htmlmod.escape
    colours = {c: _HEX[i % len(_HEX)] for i, c in enumerate(tl.categories)}
    colours[IDLE], colours[STALE] = "#e0e0e0", "#d32f2f"
    span = tl.end - tl.start if tl.end > tl.start else 1.0
    width = _LEFT + _PLOT + _RIGHT

    def x(ts: float) -> float:
        return round(_LEFT + (min(max(ts, tl.start), tl.end) - tl.start) / span * _PLOT, 1)

    gantt = []
    for row, lane in enumerate(tl.lanes):
        top = 10 + row * _LANE
        name = esc(clean(lane.worker_id))
        gantt.append(f'<text x="{_LEFT - 8}" y="{top + 13}" text-anchor="end">{name}</text>')
        cells = columns(lane, tl.start, tl.end, _PLOT)
        i = 0
        while i < len(cells):
            j = i
            while j < len(cells) and cells[j] == cells[i]:
                j += 1
            key = cells[i]
            if key is not None:
                what = "idle" if key == IDLE else "stale" if key == STALE else f"busy in {key}"
                t0, t1 = tl.start + i * span / _PLOT, tl.start + j * span / _PLOT
                gantt.append(
                    f'<rect x="{_LEFT + i}" y="{top + 2}" width="{j - i}" height="{_LANE - 4}" '
                    f'fill="{colours[key]}"><title>{name}: {esc(clean(what))} '
                    f"{esc(format_time(t0))} to {esc(format_time(t1))}</title></rect>"
                )
            i = j
    plot_h = 10 + len(tl.lanes) * _LANE
    gantt += _grid(tl, x, 0, plot_h)
    gantt += _drain(tl, x, 0, plot_h)
    gantt += _axis(tl, x, plot_h, "time")
    gantt_h = plot_h + 44
    # The backlog is a sample per cycle: a step line, held until the next sample, and back to
    # 0 after a category's last sample (a category with nothing pending or running has no row).
    peak = max([p for pts in tl.backlog.values() for _, p in pts] + [1])

    def y(pending: float) -> float:
        return round(10 + (1 - pending / peak) * _CHART, 1)

    lines = [_ygrid(k * peak / 4, y(k * peak / 4)) for k in range(5)]
    lines += _grid(tl, x, 10, 10 + _CHART)
    for category, pts in sorted(tl.backlog.items()):
        steps: list[tuple[float, float]] = []
        if pts and pts[0][0] > tl.start:
            steps.append((x(pts[0][0]), y(0)))  # nothing pending before its first sample
        for ts, pending in pts:
            if steps:
                steps.append((x(ts), steps[-1][1]))
            steps.append((x(ts), y(pending)))
        if steps and pts[-1][1] != 0:
            last = pts[-1][0] + min(span / _PLOT, tl.end - pts[-1][0])
            steps += [(x(last), steps[-1][1]), (x(last), y(0))]
        if steps:
            steps.append((x(tl.end), y(0) if pts[-1][1] != 0 else steps[-1][1]))
        path = " ".join(f"{a},{b}" for a, b in steps)
        colour = colours.get(category, "#444")
        lines.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{path}">'
            f"<title>{esc(clean(category))}</title></polyline>"
        )
    lines += _drain(tl, x, 10, 10 + _CHART)
    lines += _axis(tl, x, 10 + _CHART, "time")
    lines.append(
        f'<text transform="translate(16,{10 + _CHART / 2}) rotate(-90)" '
        'text-anchor="middle">pending tasks</text>'
    )
    legend = " ".join(
        f'<span><i style="background:{colours[k]}"></i>{esc(clean(k))}</span>'
        for k in [*tl.categories, IDLE, STALE]
    )
    title = f"sqlmon run {tl.run_id}: {format_time(tl.start)} to {format_time(tl.end)}"
    drained = (
        f"drained (idle to the end) after {format_length(tl.drained_at - tl.start)}"
        if tl.drained_at is not None
        else "never drained"
    )
    svg = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" role="img">'
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(title)}</title>",
            "<style>body{font:14px system-ui,sans-serif;margin:20px;color:#222;max-width:1400px}"
            "svg{width:100%;height:auto;display:block}svg text{font:11px system-ui,sans-serif;"
            "fill:#333}.grid{stroke:#eee}.drain{stroke:#222;stroke-dasharray:4 3}"
            "span{margin-right:14px;white-space:nowrap}i{display:inline-block;width:10px;"
            "height:10px;margin-right:4px;vertical-align:middle}</style></head><body>",
            f"<h1>{esc(title)}</h1>",
            f"<p>{esc(format_length(span))} long; {esc(drained)}. "
            "Each worker's own record of its busy and idle stretches; stale as judged by the "
            "scheduler.</p>",
            f"<p>{legend}</p>",
            f"<h2>Workers ({len(tl.lanes)})</h2>",
            svg.format(w=width, h=gantt_h),
            *gantt,
            "</svg>",
            "<h2>Backlog: pending tasks per category, as the scheduler sampled it</h2>",
            svg.format(w=width, h=_CHART + 54),
            *lines,
            "</svg>",
            "</body></html>",
            "",
        ]
    )


def _ticks(tl: Timeline) -> list[float]:
    return [tl.start + (tl.end - tl.start) * k / (_TICKS - 1) for k in range(_TICKS)]


def _grid(tl: Timeline, x: object, top: float, bottom: float) -> list[str]:
    return [
        f'<line class="grid" x1="{x(ts)}" y1="{top}" x2="{x(ts)}" y2="{bottom}"/>'  # type: ignore[operator]
        for ts in _ticks(tl)
    ]


def _ygrid(value: float, y: float) -> str:
    label = f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"
    return (
        f'<line class="grid" x1="{_LEFT}" y1="{y}" x2="{_LEFT + _PLOT}" y2="{y}"/>'
        f'<text x="{_LEFT - 8}" y="{y + 4}" text-anchor="end">{label}</text>'
    )


def _drain(tl: Timeline, x: object, top: float, bottom: float) -> list[str]:
    if tl.drained_at is None:
        return []
    at = x(tl.drained_at)  # type: ignore[operator]
    return [
        f'<line class="drain" x1="{at}" y1="{top}" x2="{at}" y2="{bottom}"/>',
        f'<text x="{at + 4}" y="{top + 12}">idle</text>',
    ]


def _axis(tl: Timeline, x: object, y: float, title: str) -> list[str]:
    out = [f'<line stroke="#999" x1="{_LEFT}" y1="{y}" x2="{_LEFT + _PLOT}" y2="{y}"/>']
    for ts in _ticks(tl):
        out.append(
            f'<text x="{x(ts)}" y="{y + 16}" text-anchor="middle">'  # type: ignore[operator]
            f"{htmlmod.escape(format_time(ts)[11:])}</text>"
        )
    out.append(
        f'<text x="{_LEFT + _PLOT / 2}" y="{y + 34}" text-anchor="middle">{title} (local)</text>'
    )
    return out
