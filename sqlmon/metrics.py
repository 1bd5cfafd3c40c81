"""Prometheus metrics for `sqlmon serve` (/metrics) and `sqlmon metrics --textfile`.

One custom collector builds every family at scrape time from live.load: a worker that is
gone simply stops being counted, and a series that disappears goes stale in Prometheus
instead of freezing. Label sets are bounded: pools x states, pools x categories, pools x
transitions; worker ids appear only with per_worker=True.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from . import __version__, live, queries

log = logging.getLogger(__name__)

# (name, type, help): what describe() returns, so registering queries nothing.
FAMILIES = (
    ("sqlmon_up", "gauge", "1 when the database could be read for this scrape, else 0"),
    ("sqlmon_build_info", "gauge", "sqlmon's version, the schema and the backend; always 1"),
    (
        "sqlmon_scheduler_last_cycle_timestamp_seconds",
        "gauge",
        "When the scheduler last committed a cycle (its heartbeat), unix seconds",
    ),
    (
        "sqlmon_scheduler_cycle_age_seconds",
        "gauge",
        "Seconds since the scheduler last committed a cycle, on this host's clock",
    ),
    ("sqlmon_scheduler_cycle_duration_seconds", "gauge", "How long the last cycle took"),
    ("sqlmon_scheduler_cycles", "counter", "Cycles of the current run"),
    ("sqlmon_scheduler_alive", "gauge", "1 when the scheduler is alive (sqlmon check's rule)"),
    ("sqlmon_system_idle", "gauge", "1 when the scheduler is alive and says idle"),
    (
        "sqlmon_idle_verdict_timestamp_seconds",
        "gauge",
        "When the scheduler last wrote its idle verdict, unix seconds",
    ),
    ("sqlmon_idle_verdict_age_seconds", "gauge", "Seconds since the idle verdict was written"),
    ("sqlmon_workers", "gauge", "Workers per pool and state"),
    ("sqlmon_busy_workers", "gauge", "Busy workers per pool and category (latest cycle)"),
    ("sqlmon_backlog_tasks", "gauge", "Pending tasks per pool and category (latest cycle)"),
    (
        "sqlmon_backlog_oldest_age_seconds",
        "gauge",
        "Age of the oldest pending task per pool and category (bundled tasks table only)",
    ),
    ("sqlmon_worker_transitions", "counter", "Liveness events the scheduler recorded"),
    ("sqlmon_heartbeat_misses", "counter", "Beats workers dropped (database busy)"),
    ("sqlmon_failed_stretches", "counter", "Busy stretches that ended by an exception"),
    ("sqlmon_scrape_duration_seconds", "gauge", "How long this scrape took to build"),
    ("sqlmon_host_workers", "gauge", "Workers per host and state (PostgreSQL)"),
    (
        "sqlmon_host_clock_skew_seconds",
        "gauge",
        "A host's clock minus the database's at its latest write (PostgreSQL; shown, never judged)",
    ),
    ("sqlmon_worker_state", "gauge", "1 for each worker's current state (--per-worker-metrics)"),
    (
        "sqlmon_worker_heartbeat_age_seconds",
        "gauge",
        "Seconds since each worker's last beat (--per-worker-metrics)",
    ),
)
# Ages freeze in a file: the textfile carries timestamps only (node_exporter's rule).
AGES = frozenset(n for n, _t, _h in FAMILIES if n.endswith("_age_seconds")) | {
    "sqlmon_scrape_duration_seconds"
}
_HELP = {n: h for n, _t, h in FAMILIES}


def _gauge(name: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, _HELP[name], labels=list(labels))


def _counter(name: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, _HELP[name], labels=list(labels))


def families(
    data: live.Live, *, backend: str, per_worker: bool = False, ages: bool = True
) -> list[Metric]:
    """Every sqlmon family for one reading (without sqlmon_up and the scrape duration)."""
    st, now = data.status, data.now
    s = st.scheduler
    out: list[Metric] = []

    info = _gauge("sqlmon_build_info", ("version", "schema_version", "backend"))
    info.add_metric([__version__, data.schema_version, backend], 1)
    out.append(info)
    if s is not None:
        out.append(_one("sqlmon_scheduler_last_cycle_timestamp_seconds", s.heartbeat))
        out.append(_one("sqlmon_idle_verdict_timestamp_seconds", s.heartbeat))
        if ages:
            out.append(_one("sqlmon_scheduler_cycle_age_seconds", max(0.0, now - s.heartbeat)))
            out.append(_one("sqlmon_idle_verdict_age_seconds", max(0.0, now - s.heartbeat)))
        cycles = _counter("sqlmon_scheduler_cycles")
        cycles.add_metric([], s.cycle)
        out.append(cycles)
    if data.cycle is not None:
        out.append(_one("sqlmon_scheduler_cycle_duration_seconds", data.cycle.seconds))
    out.append(_one("sqlmon_scheduler_alive", int(st.verdict.alive)))
    out.append(_one("sqlmon_system_idle", int(data.idle.alive)))

    workers = _gauge("sqlmon_workers", ("pool", "state"))
    for pool, states in live.workers_by_state(data).items():
        for state, n in states.items():
            workers.add_metric([pool, state], n)
    out.append(workers)

    backlog = {(b.pool, b.category): b for b in st.backlog}
    busy = _gauge("sqlmon_busy_workers", ("pool", "category"))
    pending = _gauge("sqlmon_backlog_tasks", ("pool", "category"))
    oldest = _gauge("sqlmon_backlog_oldest_age_seconds", ("pool", "category"))
    for pool, categories in data.pools.items():
        for cat in categories:
            b = backlog.get((pool, cat))
            busy.add_metric([pool, cat], b.busy if b else 0)
            pending.add_metric([pool, cat], b.pending if b else 0)
            if data.oldest is not None:
                created = data.oldest.get((pool, cat))
                oldest.add_metric([pool, cat], max(0.0, now - created) if created else 0)
    out += [busy, pending]
    if data.oldest is not None and ages:
        out.append(oldest)

    transitions = _counter("sqlmon_worker_transitions", ("pool", "to"))
    misses = _counter("sqlmon_heartbeat_misses", ("pool",))
    failed = _counter("sqlmon_failed_stretches", ("pool",))
    for pool in data.pools:
        for event in live.TRANSITIONS:
            transitions.add_metric([pool, event], data.transitions.get((pool, event), 0))
        misses.add_metric([pool], sum(w.missed for w in st.workers if w.pool == pool))
        failed.add_metric([pool], data.failed.get(pool, 0))
    out += [transitions, misses, failed]

    if backend == "postgresql":
        # Workers on many hosts: a series per host (hosts are few), all states zero-filled.
        by_host = _gauge("sqlmon_host_workers", ("host", "state"))
        skew = _gauge("sqlmon_host_clock_skew_seconds", ("host",))
        for h in queries.hosts(st.workers):
            for state in live.STATES:
                by_host.add_metric([h.host, state], h.workers.get(state, 0))
            if h.clock_skew is not None:
                skew.add_metric([h.host], h.clock_skew)
        out += [by_host, skew]

    if per_worker:
        each = _gauge("sqlmon_worker_state", ("worker", "pool", "state"))
        beat = _gauge("sqlmon_worker_heartbeat_age_seconds", ("worker", "pool"))
        for w in st.workers:
            each.add_metric([w.worker_id, w.pool, str(w.state)], 1)
            if ages:
                beat.add_metric([w.worker_id, w.pool], max(0.0, now - w.last_heartbeat))
        out.append(each)
        if ages:
            out.append(beat)
    return out


def _one(name: str, value: float) -> GaugeMetricFamily:
    g = _gauge(name)
    g.add_metric([], value)
    return g


class SqlmonCollector(Collector):
    """Reads the database on every collect(); `reader` returns a live.Live from one short read
    transaction, or raises when the database cannot be read (then only sqlmon_up 0)."""

    def __init__(
        self,
        reader: Callable[[], live.Live],
        *,
        backend: str = "sqlite",
        per_worker: bool = False,
        ages: bool = True,
    ) -> None:
        self.reader, self.backend, self.per_worker, self.ages = reader, backend, per_worker, ages
        self._last_error = ""

    def describe(self) -> Iterator[Metric]:
        # Without this, registering the collector would run collect(): a query at start-up.
        for name, kind, text in FAMILIES:
            yield (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, text)

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            data = self.reader()
        except Exception as exc:  # noqa: BLE001 - any failure to read is sqlmon_up 0, logged
            text = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if text != self._last_error:  # once per kind of failure, not once per scrape
                log.warning("metrics: cannot read the database: %s", text)
                self._last_error = text
            yield _one("sqlmon_up", 0)
            return
        self._last_error = ""
        yield _one("sqlmon_up", 1)
        yield from families(data, backend=self.backend, per_worker=self.per_worker, ages=self.ages)
        if self.ages:
            yield _one("sqlmon_scrape_duration_seconds", time.perf_counter() - started)


def registry(collector: SqlmonCollector) -> CollectorRegistry:
    """A registry of its own: no process or GC metrics of the serving process mixed in."""
    reg = CollectorRegistry(auto_describe=True)
    reg.register(collector)
    return reg


def write_textfile(path: str, reader: Callable[[], live.Live], backend: str = "sqlite") -> bool:
    """Write the metrics for node_exporter's textfile collector, atomically (temp file and
    rename); timestamps only, no ages. True when the database could be read."""
    from prometheus_client import write_to_textfile

    collector = SqlmonCollector(reader, backend=backend, ages=False)
    write_to_textfile(path, registry(collector))
    return not collector._last_error
