"""How big each section runs: full (the recorded run), quick (a few minutes), tiny (the test)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    name: str
    beat_rounds: int  # interleaved rounds of each heartbeat variant
    beat_block: int  # beats per variant per round
    coalesced_batches: int
    coalesced_batch: int  # calls timed together (one call is below the timer's resolution)
    tail_workers: int
    tail_alive_s: float  # seconds of load with the scheduler alive
    tail_dead_s: float  # seconds of load after the scheduler is killed
    cycle_workers: int
    cycle_small: int  # task rows in the small table
    cycle_large: int  # task rows in the large table
    cycle_pending: int  # pending tasks in both
    cycle_steps: int  # scheduler cycles timed one at a time
    cycle_cpu_s: float  # seconds the scheduler process runs at 1 Hz for its CPU share
    cycle_warmup_s: float  # seconds it runs first (start-up, the first cycles), not counted
    startup_runs: int
    history_hours: float  # length of the generated run for the post-run commands
    history_workers: int
    history_categories: int
    cli_runs: int
    record_hours: float = 24.0  # length of the generated run of stretches (section 7)
    live_requests: int = 500  # requests timed per live-view endpoint
    fleet_workers: int = 1000  # simulated workers on PostgreSQL, each a Heartbeat at 1 Hz
    fleet_processes: int = 10  # processes holding them
    fleet_seconds: float = 60.0  # the measured window
    fleet_warmup_s: float = 35.0  # after every worker registered: past the fold's settle time


FULL = Sizes(
    name="full",
    beat_rounds=20,
    beat_block=1000,
    coalesced_batches=300,
    coalesced_batch=2000,
    tail_workers=16,
    tail_alive_s=40.0,
    tail_dead_s=25.0,
    cycle_workers=64,
    cycle_small=10_000,
    cycle_large=1_000_000,
    cycle_pending=10_000,
    cycle_steps=200,
    cycle_cpu_s=30.0,
    cycle_warmup_s=3.0,
    startup_runs=15,
    history_hours=24.0,
    history_workers=16,
    history_categories=10,
    cli_runs=5,
    live_requests=1000,
)

QUICK = Sizes(
    name="quick",
    beat_rounds=6,
    beat_block=500,
    coalesced_batches=100,
    coalesced_batch=2000,
    tail_workers=16,
    tail_alive_s=10.0,
    tail_dead_s=6.0,
    cycle_workers=64,
    cycle_small=10_000,
    cycle_large=1_000_000,
    cycle_pending=10_000,
    cycle_steps=50,
    cycle_cpu_s=6.0,
    cycle_warmup_s=3.0,
    startup_runs=5,
    history_hours=24.0,
    history_workers=16,
    history_categories=10,
    cli_runs=2,
    live_requests=300,
    fleet_seconds=15.0,
    fleet_warmup_s=5.0,
)

# For the test: every section runs and writes its figures, in seconds rather than minutes.
TINY = Sizes(
    name="tiny",
    beat_rounds=2,
    beat_block=50,
    coalesced_batches=10,
    coalesced_batch=200,
    tail_workers=3,
    tail_alive_s=2.0,
    tail_dead_s=1.0,
    cycle_workers=8,
    cycle_small=200,
    cycle_large=2_000,
    cycle_pending=100,
    cycle_steps=5,
    cycle_cpu_s=1.0,
    cycle_warmup_s=1.0,
    startup_runs=1,
    history_hours=0.05,
    history_workers=4,
    history_categories=3,
    cli_runs=1,
    record_hours=0.01,
    live_requests=50,
    fleet_workers=20,
    fleet_processes=2,
    fleet_seconds=2.0,
    fleet_warmup_s=1.0,
)
