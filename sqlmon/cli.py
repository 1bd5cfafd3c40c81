"""The `sqlmon` command. It imports the library; the library never imports it."""

# No `from __future__ import annotations` here: typer would eval each annotation's text at
# every start, 6 ms of a command's start-up.
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import click
import sqlalchemy as sa
import typer
import typer.core

from . import config, queries
from . import db as dbmod
from .backlog import TaskTable
from .errors import SqlmonError

if TYPE_CHECKING:
    from . import demo as demomod


class _Commands(typer.core.TyperGroup):
    """The command group: a SqlmonError from any command is bad input, said once here."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SqlmonError as exc:
            fail(str(exc))


app = typer.Typer(
    cls=_Commands,
    help="sqlmon: watch a multi-process pipeline through SQLite.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: paragraphs rewrapped to the terminal, and rich never imported.
    rich_markup_mode=None,
)

DbArg = Annotated[
    str, typer.Argument(help="The database: a file path or an SQLAlchemy URL.", metavar="DB")
]


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit code 2, nothing changed."""
    from .render import clean

    typer.echo(f"sqlmon: {clean(message)}", err=True)
    raise typer.Exit(2)


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


@app.command()
def init(db: DbArg) -> None:
    """Create the database and its schema, or upgrade it (safe to repeat)."""
    from .migrate import init_db

    init_db(db)
    typer.echo(f"initialised {dbmod.url_text(db)}")


_TASKS = TaskTable()  # the bundled table: the defaults the task table options show


@app.command()
def run(
    db: DbArg,
    interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="Between cycles.")
    ] = config.INTERVAL,
    stale_after: Annotated[
        float, typer.Option(metavar="SECONDS", help="Without a beat: stale.")
    ] = config.STALE_AFTER,
    warn_after: Annotated[
        float, typer.Option(metavar="SECONDS", help="Stale this long: one warning.")
    ] = config.WARN_AFTER,
    dead_after: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="Without a beat: dead, for a worker on another host when nothing shows it sooner.",
        ),
    ] = config.DEAD_AFTER,
    idle_confirm: Annotated[
        int, typer.Option(metavar="N", help="Idle cycles in a row before idle.")
    ] = config.IDLE_CONFIRM,
    standby: Annotated[
        bool,
        typer.Option(help="If another scheduler runs, wait and take over when it stops."),
    ] = False,
    hud: Annotated[
        str,
        typer.Option(
            metavar="line|full|off",
            help="The HUD on stderr: one line per --hud-every, with the per-pool detail when "
            "a worker's state or the busy categories changed; the detail every time; or none.",
        ),
    ] = "line",
    hud_every: Annotated[
        float, typer.Option(metavar="SECONDS", min=0.0, help="Between HUD lines, at least.")
    ] = config.HUD_EVERY,
    task_table: Annotated[
        str | None,
        typer.Option(metavar="NAME", help=f"The pipeline's task table [{_TASKS.table}]."),
    ] = None,
    category_column: Annotated[
        str | None, typer.Option(metavar="NAME", help=f"Its category column [{_TASKS.category}].")
    ] = None,
    status_column: Annotated[
        str | None, typer.Option(metavar="NAME", help=f"Its status column [{_TASKS.status}].")
    ] = None,
    pool_column: Annotated[
        str | None, typer.Option(metavar="NAME", help=f"Its pool column [{_TASKS.pool}].")
    ] = None,
    pools: Annotated[
        str | None,
        typer.Option(
            metavar="CAT=POOL,...",
            help="For a table without a pool column: each category's pool (OCR=gpu,SUMMARY=cpu).",
        ),
    ] = None,
    pending: Annotated[
        str | None,
        typer.Option(
            metavar="V,...", help=f"Status values that count as pending [{_TASKS.pending[0]}]."
        ),
    ] = None,
    running: Annotated[
        str | None,
        typer.Option(
            metavar="V,...", help=f"Status values that count as running [{_TASKS.running[0]}]."
        ),
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help=f"A column whose maximum only grows [{_TASKS.id}]; none: no such."
        ),
    ] = None,
    task_db: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="The task table is in this database (read-only)."),
    ] = None,
) -> None:
    """Run the scheduler in the foreground until Ctrl-C or SIGTERM.

    One scheduler is active per database: a second one refuses, or with --standby waits
    (read-only) and takes over when the first stops or dies. The task table options say
    where your pipeline keeps its tasks, as sqlmon.TaskTable does.
    """
    import logging

    from .scheduler import Scheduler

    if hud not in ("line", "full", "off"):
        fail(f"--hud: {hud!r} is not one of line, full, off")
    if pools is not None and pool_column is not None:
        fail("--pools is for a table without a pool column: give --pool-column or --pools")
    table: dict[str, object] = {
        k: v
        for k, v in {
            "table": task_table,
            "category": category_column,
            "status": status_column,
            "pool": pool_column,
            "database": task_db,
        }.items()
        if v is not None
    }
    if pools is not None:
        table["pool"], table["pools"] = None, _pairs("--pools", pools)
    for key, text in (("pending", pending), ("running", running)):
        if text is not None:
            table[key] = [v.strip() for v in text.split(",") if v.strip()]
    if id_column is not None:
        table["id"] = None if id_column == "none" else id_column
    _logging()
    if hud == "full":
        logging.getLogger("sqlmon.hud").setLevel(logging.DEBUG)
    try:
        scheduler = Scheduler(
            db,
            interval=interval,
            stale_after=stale_after,
            warn_after=warn_after,
            dead_after=dead_after,
            idle_confirm=idle_confirm,
            hud_every=0.0 if hud == "off" else hud_every,
            backlog=TaskTable(**table),  # type: ignore[arg-type]
            standby=standby,
        )
    except KeyboardInterrupt:
        _interrupted()
    scheduler.run()
    if scheduler.exit_code:
        raise typer.Exit(scheduler.exit_code)
    # The scheduler ends its run on SIGINT by itself; the shell still hears of the interrupt.
    if getattr(scheduler, "_signalled", None) == "SIGINT":
        raise typer.Exit(130)


def _pairs(option: str, text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            fail(f"{option}: {item!r} is not CATEGORY=POOL")
        out[key.strip()] = value.strip()
    return out


def _interrupted() -> NoReturn:
    """Ctrl-C: the children are stopped by now; one line, and the shell's 130."""
    typer.echo("sqlmon: interrupted", err=True)
    raise typer.Exit(130)


@app.command()
def demo(
    db: Annotated[
        str | None,
        typer.Option(help="Database file or SQLAlchemy URL (default: ./sqlmon-demo.db)."),
    ] = None,
    gpu_workers: Annotated[int, typer.Option(min=1, help="GPU worker processes.")] = 3,
    cpu_workers: Annotated[int, typer.Option(min=1, help="CPU worker processes.")] = 5,
    videos: Annotated[int, typer.Option(min=1, help="Videos to process.")] = 3,
    frames: Annotated[int, typer.Option(min=1, help="Frames per video.")] = 16,
    length: Annotated[float, typer.Option(min=0.0, help="Scale of each task's work.")] = 1.0,
    stuck: Annotated[
        bool, typer.Option(help="One worker hangs, goes stale, then recovers.")
    ] = False,
) -> None:
    """Run a dashcam-like pipeline under the scheduler, wait for idle, and summarise."""
    from . import demo as demomod

    _logging()
    settings = demomod.DemoSettings(
        db=db if db is not None else demomod.default_db(),
        gpu_workers=gpu_workers,
        cpu_workers=cpu_workers,
        videos=videos,
        frames=frames,
        length=length,
        stuck=stuck,
    )
    try:
        result = demomod.run(settings)
    except KeyboardInterrupt:
        _interrupted()  # demo.run stopped its workers and the scheduler first
    typer.echo(render_demo_summary(settings.db, result))
    if not result.idle:
        raise typer.Exit(1)


def render_demo_summary(db: str, result: "demomod.DemoResult") -> str:
    if result.run_id is None:
        return "no run was recorded: the scheduler did not start (see its log above)"
    from tabulate import tabulate

    from .report import run_report

    with inspecting(db) as conn:
        chosen = _run(conn, result.run_id, time.time())
        with dbmod.read(conn):
            r = run_report(conn, chosen.run_id, state=chosen.state, end=chosen.end)
    # Tasks as the workers' own busy stretches count them.
    done = sum(c.tasks_done or 0 for c in r.categories)
    verdict = "idle" if result.idle else "NOT idle (timed out)"
    lines = [
        "",
        f"run {r.run_id}: {verdict} after {result.seconds:.1f} s; "
        f"{done} tasks done, {sum(c.failed for c in r.categories)} failed, "
        f"{len(r.stale)} stale episode(s), {len(r.dead)} dead worker(s)",
        "",
        tabulate(
            [(c.category, c.tasks_done or 0, c.failed) for c in r.categories],
            headers=("category", "tasks done", "failed"),
        ),
        "",
        tabulate(
            [(w.worker_id, f"{w.busy_seconds:.1f}", f"{w.utilisation:.0%}") for w in r.workers],
            headers=("worker", "busy s", "utilisation"),
        ),
        "",
    ]
    path = dbmod.sqlite_path(dbmod.to_url(db))
    shell = f"sqlite3 {path}" if path else "psql"
    lines.append(
        f"database: {_name(db)}  (try: sqlmon report DB, or {shell} "
        "'SELECT * FROM worker_intervals LIMIT 10')"
    )
    return "\n".join(lines)


# -- inspection: read-only, never creates or changes the database --------------------------

FormatOpt = Annotated[
    str, typer.Option("--format", "-f", help="Output: table, json or csv.", metavar="FORMAT")
]
RunOpt = Annotated[
    int | None, typer.Option("--run", "-r", help="Run id (default: the latest run).")
]
SinceOpt = Annotated[
    str | None,
    typer.Option(
        help="From this moment: a duration before now (10m, 2h) or a local "
        "timestamp (2026-11-29 14:05, 14:05)."
    ),
]
UntilOpt = Annotated[str | None, typer.Option(help="Up to this moment: as --since.")]


@contextmanager
def inspecting(db: str) -> Iterator[sa.Connection]:
    """A read-only connection to a checked database; bad input ends the command with exit 2."""
    from .migrate import describe

    try:
        with queries.connect(db) as conn:
            yield conn
    except SqlmonError as exc:
        fail(str(exc))
    except sa.exc.DatabaseError as exc:
        fail(f"{_name(db)}: {describe(exc)}")
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        # A URL SQLAlchemy cannot use here: an unknown scheme, or its driver not installed.
        fail(f"{_name(db)}: cannot open this URL ({exc})")


def _name(db: str) -> str:
    """The database as people may see it in a message: a URL's password hidden."""
    try:
        url = dbmod.to_url(db)
        return dbmod.sqlite_path(url) or url.render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return db


def _format(fmt: str) -> str:
    from .render import FORMATS

    if fmt.lower() not in FORMATS:
        fail(f"unknown format {fmt!r} (one of: {', '.join(FORMATS)})")
    return fmt.lower()


def _moment(option: str, text: str | None, now: float) -> float | None:
    from .durations import parse_moment

    if text is None:
        return None
    try:
        return parse_moment(text, now)
    except ValueError as exc:
        fail(f"{option}: {exc}")


def _run(conn: sa.Connection, run_id: int | None, now: float) -> queries.RunLine:
    """The run asked for, or the latest; with no run at all yet, say so and end with exit 0."""
    try:
        with dbmod.read(conn):
            return queries.find_run(conn, now, run_id)
    except queries.NoRuns as exc:
        if run_id is not None:
            raise
        typer.echo(str(exc))
        raise typer.Exit(0) from None


@app.command()
def status(db: DbArg, fmt: FormatOpt = "table") -> None:
    """The picture now: scheduler, idle verdict and why not, workers, backlog."""
    from .render import status_text

    fmt = _format(fmt)
    if fmt == "csv":
        # Four sections of different shapes: one CSV of them would drop or garble some.
        fail("status has no csv form (its sections differ in shape): use -f json")
    with inspecting(db) as conn, dbmod.read(conn):
        st = queries.status(conn)
    typer.echo(status_text(st, fmt))


@app.command()
def watch(
    db: DbArg,
    interval: Annotated[
        float, typer.Option(min=0.1, metavar="SECONDS", help="Between redraws.")
    ] = config.INTERVAL,
    count: Annotated[
        int,
        typer.Option(min=0, metavar="N", help="Stop after this many redraws (0: until Ctrl-C)."),
    ] = 0,
) -> None:
    """`status`, redrawn in place every interval until Ctrl-C, while the pipeline runs.

    On a terminal each page fits the window: the scheduler and idle lines on top, the tables
    cut to what fits ("+N more"), stale and dead workers in red (NO_COLOR is honoured).
    Started before the database exists, it waits for it.
    """
    from .render import status_text, watch_page

    redraw = sys.stdout.isatty()
    colour = _colour_allowed()
    shown = 0
    try:
        _wait_for_database(db, interval)
        with inspecting(db) as conn:
            while True:
                # One short read transaction per redraw: a held one would pin the WAL.
                with dbmod.read(conn):
                    st = queries.status(conn)
                if redraw:
                    size = shutil.get_terminal_size()
                    page = watch_page(st, size.columns, size.lines, colour)
                    typer.echo("\x1b[H\x1b[2J" + page, color=colour)
                else:
                    typer.echo(status_text(st) + "\n")
                shown += 1
                if count and shown >= count:
                    return
                time.sleep(interval)
    except KeyboardInterrupt:
        _interrupted()


def _wait_for_database(db: str, interval: float) -> None:
    """Until the database exists and is initialised; other bad input fails at once."""
    from .errors import DatabaseMissing, NotInitialised
    from .migrate import check_database

    told = False
    while True:
        try:
            check_database(db)
            return
        except (DatabaseMissing, NotInitialised) as exc:
            if not told:
                typer.echo(f"waiting for the database: {exc}", err=True)
                told = True
        except SqlmonError as exc:
            fail(str(exc))
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError):
            return  # not a file this can wait for: `inspecting` says what is wrong with it
        time.sleep(interval)


@app.command()
def runs(db: DbArg, fmt: FormatOpt = "table") -> None:
    """Each run: start, end, length and end reason.

    A run whose scheduler went without ending it (killed, crashed) shows as 'vanished'.
    """
    from .render import runs_text

    fmt = _format(fmt)
    with inspecting(db) as conn, dbmod.read(conn):
        rows = queries.list_runs(conn)
    typer.echo(queries.NO_RUNS if not rows and fmt == "table" else runs_text(rows, fmt))


@app.command()
def history(
    db: DbArg,
    run: RunOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option(min=0, help="At most this many, the latest (0: all).")] = 50,
    fmt: FormatOpt = "table",
) -> None:
    """The snapshots of a run, one per scheduler cycle."""
    from .render import history_text

    fmt, now = _format(fmt), time.time()
    start, end = _moment("--since", since, now), _moment("--until", until, now)
    with inspecting(db) as conn:
        chosen = _run(conn, run, now)
        with dbmod.read(conn):
            rows = queries.run_snapshots(conn, chosen.run_id, since=start, until=end, limit=limit)
            total = len(rows)
            if limit and total == limit:
                total = queries.run_snapshot_count(conn, chosen.run_id, since=start, until=end)
    typer.echo(history_text(rows, fmt))
    if total > len(rows):
        typer.echo(f"{len(rows)} of {total} shown; --limit 0 for all", err=True)


@app.command()
def events(
    db: DbArg,
    worker: Annotated[str | None, typer.Option(help="Only this worker.")] = None,
    event: Annotated[
        str | None,
        typer.Option(
            help="Only this event: joined, busy, idle, failed, stale, recovered, dead, exited "
            "(or category, in older histories)."
        ),
    ] = None,
    category: Annotated[str | None, typer.Option(help="Only this category.")] = None,
    run: Annotated[
        int | None, typer.Option("--run", "-r", help="Only this run (default: all).")
    ] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[
        int, typer.Option(min=0, help="At most this many, the latest (0: all).")
    ] = 100,
    fmt: FormatOpt = "table",
) -> None:
    """Worker events, oldest first: the scheduler's liveness events and the stretches the
    workers recorded (busy, idle, failed)."""
    from . import eventlog
    from .render import events_text
    from .states import Event

    fmt, now = _format(fmt), time.time()
    if event is not None and event not in set(Event):
        fail(f"--event: unknown event {event!r} (one of: {', '.join(Event)})")
    start, end = _moment("--since", since, now), _moment("--until", until, now)
    with inspecting(db) as conn:
        if run is not None:
            _run(conn, run, now)
        with dbmod.read(conn):
            rows = eventlog.events(
                conn,
                run_id=run,
                worker=worker,
                event=event,
                category=category,
                since=start,
                until=end,
                limit=limit,
            )
    typer.echo(events_text(rows, fmt))


def _colour_allowed() -> bool:
    # The conventions of https://no-color.org and of dumb terminals; never into a pipe.
    return (
        sys.stdout.isatty()
        and "NO_COLOR" not in os.environ
        and os.environ.get("TERM", "") != "dumb"
    )


@app.command()
def timeline(
    db: DbArg,
    run: RunOpt = None,
    width: Annotated[
        int | None, typer.Option(min=20, help="Characters (default: the terminal's width).")
    ] = None,
    colour: Annotated[
        bool | None,
        typer.Option(
            "--colour/--no-colour", help="Colour by category (default: when the terminal allows)."
        ),
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            help="Also write one self-contained HTML page "
            "(inline SVG) with the chart and the backlog per category over time."
        ),
    ] = None,
) -> None:
    """Per worker, the busy / idle / stale stretches of a run as a text Gantt chart.

    One letter per category, coloured where the terminal allows; --html FILE also writes a
    self-contained page with the chart and the backlog per category over time.
    """
    from . import timeline as tlmod

    now = time.time()
    target = None if html is None else html.expanduser().absolute()
    db_path = dbmod.sqlite_path(dbmod.to_url(db))
    if (
        target is not None
        and db_path is not None
        and os.path.exists(target)
        and os.path.samefile(target, db_path)
    ):
        fail(f"--html: {target} is the database itself")
    with inspecting(db) as conn:
        chosen = _run(conn, run, now)
        with dbmod.read(conn):
            tl = tlmod.load(conn, chosen.run_id, chosen.started_at, chosen.end)
    columns = width or shutil.get_terminal_size((100, 24)).columns
    colour = _colour_allowed() if colour is None else colour
    # echo strips escapes when stdout is no terminal; --colour asks for them all the same.
    typer.echo(tlmod.text(tl, columns, colour), color=colour)
    if target is not None:
        try:
            target.write_text(tlmod.html(tl), encoding="utf-8")
        except OSError as exc:
            fail(f"--html: cannot write {target}: {exc.strerror}")
        typer.echo(f"wrote {target}")


@app.command()
def report(db: DbArg, run: RunOpt = None, fmt: FormatOpt = "table") -> None:
    """The post-run analysis of a run: drain, utilisation, throughput, peaks, trouble.

    Length and time to drain; per worker busy time, utilisation, stale episodes and longest
    heartbeat gap; per category busy worker-seconds and tasks finished per second; backlog
    peaks; stale episodes; dead workers; scheduler cycle times and skipped writes.
    """
    from .render import report_text
    from .report import run_report

    fmt, now = _format(fmt), time.time()
    with inspecting(db) as conn:
        chosen = _run(conn, run, now)
        with dbmod.read(conn):
            data = run_report(conn, chosen.run_id, state=chosen.state, end=chosen.end)
    typer.echo(report_text(data, fmt))


@app.command()
def check(db: DbArg) -> None:
    """Health probe: exit 0 when all is well, 1 otherwise, with one line that says why.

    Well means: the scheduler's heartbeat is fresh and no worker is stale or dead. Bad input
    exits 2, as for every command.
    """
    with inspecting(db) as conn, dbmod.read(conn):
        ok, why = queries.health(queries.status(conn))
    from .render import clean

    typer.echo(clean(why))
    raise typer.Exit(0 if ok else 1)


@app.command()
def idle(
    db: DbArg,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only a verdict whose reads all began after this moment (as history --since)."
        ),
    ] = None,
) -> None:
    """Exit 0 when the system is idle (sqlmon.is_idle holds), 1 otherwise, saying why not."""
    from .idle import idle_now
    from .render import clean

    after = _moment("--since", since, time.time())
    with inspecting(db) as conn:
        verdict = idle_now(conn, after)
    if verdict.alive:
        typer.echo("idle")
        raise typer.Exit(0)
    typer.echo(f"not idle: {clean(verdict.reason)}")
    raise typer.Exit(1)


@app.command()
def prune(
    db: DbArg,
    older_than: Annotated[
        str, typer.Option(help="Delete runs last alive longer ago than this: 7d, 12h, 30m.")
    ],
    dry_run: Annotated[bool, typer.Option(help="Only say what would go.")] = False,
) -> None:
    """Delete the history of older runs, in batches; the latest run is always kept.

    Snapshots, their counts, worker events, stretch totals and run rows go, and the worker
    stretches that end before the oldest run left; the task table and worker_status stay.
    Each batch is one short write transaction.
    """
    from .durations import parse_duration
    from .migrate import describe
    from .prune import old_runs
    from .prune import prune as prune_runs

    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        fail(f"--older-than: {exc}")
    before = time.time() - age
    with inspecting(db) as conn, dbmod.read(conn):
        targets = old_runs(conn, before)
    if dry_run or not targets:
        verb = "would prune" if dry_run else "nothing to prune:"
        typer.echo(f"{verb} {len(targets)} run(s) {_ids(targets)}older than {older_than}")
        return
    try:
        # Each batch waits its turn for the write lock, as a person's tool would.
        with dbmod.connect(db, "tool") as conn:
            done = prune_runs(conn, before)
    except SqlmonError as exc:
        fail(f"prune: {exc}")
    except sa.exc.DatabaseError as exc:
        fail(f"prune: {describe(exc)} (batches already done stay done; run it again to finish)")
    typer.echo(
        f"pruned {len(done.runs)} run(s) {_ids(done.runs)}older than {older_than}: "
        f"{done.snapshots} snapshots, {done.counts} snapshot counts, {done.events} worker "
        f"events, {done.totals} stretch totals, {len(done.runs)} run rows and "
        f"{done.stretches} worker stretches from before the oldest run left; "
        f"{done.rows} rows in all"
    )


@app.command()
def serve(
    db: DbArg,
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback is logged as a warning.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 9753,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Also accept this Host header (a proxy's name); repeatable.",
        ),
    ] = None,
    per_worker_metrics: Annotated[
        bool, typer.Option(help="Add per-worker series to /metrics (one per worker id).")
    ] = False,
) -> None:
    """Serve a read-only live page, a JSON API and Prometheus /metrics until Ctrl-C.

    GET and HEAD only; binds 127.0.0.1 unless told; a Host header that is not the bound
    address, localhost or an --allowed-host is refused (403). See docs/serve.md.
    """
    from .migrate import check_database
    from .serve import serve as serve_forever

    _logging()
    try:
        check_database(db)
        serve_forever(db, host, port, allowed=allowed_host or (), per_worker=per_worker_metrics)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


@app.command()
def metrics(
    db: DbArg,
    textfile: Annotated[
        Path,
        typer.Option(help="Write here, atomically, for node_exporter's textfile collector."),
    ],
) -> None:
    """Write the /metrics families once to a *.prom file (timestamps only, no ages).

    Run it from cron or a timer; alert on node_textfile_mtime_seconds, since node_exporter
    keeps exporting a file nobody updates any more.
    """
    from .metrics import write_textfile
    from .source import Source

    _logging()
    target = textfile.expanduser().absolute()
    with dbmod.as_found(db):
        source = Source(db)
        try:
            ok = write_textfile(str(target), source.live, backend=source.backend)
        except OSError as exc:
            fail(f"--textfile: cannot write {target}: {exc.strerror or exc}")
        finally:
            source.close()
    typer.echo(f"wrote {target}" + ("" if ok else " (sqlmon_up 0: the database cannot be read)"))
    if not ok:
        raise typer.Exit(1)


def _ids(run_ids: list[int]) -> str:
    return f"({', '.join(map(str, run_ids))}) " if run_ids else ""


def main() -> None:
    app()
