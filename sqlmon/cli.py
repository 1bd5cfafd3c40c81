"""The `sqlmon` command. It imports the library; the library never imports it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from . import db as dbmod
from . import demo as demomod
from .errors import SqlmonError

app = typer.Typer(
    help="sqlmon: watch a multi-process pipeline through SQLite.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DbArg = Annotated[str, typer.Argument(help="The database: a file path or an SQLAlchemy URL.")]


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit code 2, nothing changed."""
    typer.echo(f"sqlmon: {message}", err=True)
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

    try:
        init_db(db)
    except SqlmonError as exc:
        fail(str(exc))
    typer.echo(f"initialised {dbmod.url_text(db)}")


@app.command()
def run(
    db: DbArg,
    interval: Annotated[float, typer.Option(help="Seconds between cycles.")] = 1.0,
    stale_after: Annotated[float, typer.Option(help="Seconds without a beat: stale.")] = 10.0,
    warn_after: Annotated[float, typer.Option(help="Seconds stale before a warning.")] = 30.0,
    idle_confirm: Annotated[int, typer.Option(help="Idle cycles in a row before idle.")] = 2,
) -> None:
    """Run the scheduler in the foreground until Ctrl-C or SIGTERM."""
    from .scheduler import Scheduler

    _logging()
    try:
        scheduler = Scheduler(
            db, interval=interval, stale_after=stale_after, warn_after=warn_after,
            idle_confirm=idle_confirm,
        )
    except SqlmonError as exc:
        fail(str(exc))
    scheduler.run()


@app.command()
def demo(
    db: Annotated[
        Path | None, typer.Option(help="Database file (default: ./sqlmon-demo.db).")
    ] = None,
    gpu_workers: Annotated[int, typer.Option(min=1, help="GPU worker processes.")] = 3,
    cpu_workers: Annotated[int, typer.Option(min=1, help="CPU worker processes.")] = 5,
    videos: Annotated[int, typer.Option(min=1, help="Videos to process.")] = 3,
    frames: Annotated[int, typer.Option(min=1, help="Frames per video.")] = 8,
    length: Annotated[float, typer.Option(min=0.0, help="Scale of each task's work.")] = 1.0,
    stuck: Annotated[bool, typer.Option(help="One worker hangs, goes stale, then recovers.")] = False,
) -> None:
    """Run a dashcam-like pipeline under the scheduler, wait for idle, and summarise."""
    _logging()
    settings = demomod.DemoSettings(
        db=str(db) if db is not None else demomod.default_db(),
        gpu_workers=gpu_workers,
        cpu_workers=cpu_workers,
        videos=videos,
        frames=frames,
        length=length,
        stuck=stuck,
    )
    try:
        result = demomod.run(settings)
    except SqlmonError as exc:
        fail(str(exc))
    typer.echo(render_demo_summary(settings.db, result))
    if not result["idle"]:
        raise typer.Exit(1)


def render_demo_summary(db: str, result: dict[str, object]) -> str:
    from tabulate import tabulate

    from .report import run_summary

    engine = dbmod.engine(db, "read")
    try:
        with engine.connect() as conn, dbmod.read(conn):
            summary = run_summary(conn, int(result["run_id"]))  # type: ignore[call-overload]
    finally:
        engine.dispose()
    verdict = "idle" if result["idle"] else "NOT idle (timed out)"
    lines = [
        "",
        f"run {summary.run_id}: {verdict} after {result['seconds']:.1f} s; "
        f"{sum(summary.tasks_done.values())} tasks done, "
        f"{summary.stale_episodes} stale episode(s), {summary.dead_workers} dead worker(s)",
        "",
        tabulate(sorted(summary.tasks_done.items()), headers=("category", "tasks done")),
        "",
        tabulate(
            [(w.worker_id, f"{w.busy_seconds:.1f}", f"{w.utilisation:.0%}") for w in summary.workers],
            headers=("worker", "busy s", "utilisation"),
        ),
        "",
        f"database: {db}  (try: sqlite3 {db} 'SELECT * FROM worker_intervals LIMIT 10')",
    ]
    return "\n".join(lines)


def main() -> None:
    app()
