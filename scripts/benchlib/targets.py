"""The issue's targets, judged on one run's figures, and the table the script prints."""

from __future__ import annotations

from typing import Any

from .stats import cores, ratio


def _get(results: dict[str, Any], *path: str) -> Any:
    value: Any = results
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def judge(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per target: name, figure (text), met (True, False, or None: not measured)."""
    sqlmon = _get(r, "heartbeat_write", "sqlmon", "median_us")
    raw = _get(r, "heartbeat_write", "sqlite3_raw", "median_us")
    manager = _get(r, "heartbeat_write", "manager_dict", "median_us")
    redis = _get(r, "heartbeat_write", "redis", "median_us")
    cyc = r.get("scheduler_cycle", {})
    small, large = _get(cyc, "small", "median_ms"), _get(cyc, "large", "median_ms")
    cpu = [
        c
        for c in (_get(cyc, "small", "cpu_share"), _get(cyc, "large", "cpu_share"))
        if c is not None
    ]
    st = r.get("startup", {})
    pr = r.get("post_run", {})
    tl = r.get("tails", {})
    out = []

    section = "heartbeat_write"  # the section the targets below are judged from

    def target(name: str, value: float | None, ok: bool | None, figure: str) -> None:
        if section not in r:
            return  # not run (bench.py --only)
        out.append(
            {
                "target": name,
                "value": value,
                "met": None if value is None else ok,
                "figure": figure if value is not None else "not measured",
            }
        )

    x = ratio(sqlmon, raw)
    target(
        "heartbeat write <= 1.15x raw sqlite3",
        x,
        x is not None and x <= 1.15,
        f"{x:.2f}x ({sqlmon:.1f} vs {raw:.1f} us)" if x else "",
    )
    x = ratio(manager, sqlmon)
    target(
        "heartbeat write >= 3x faster than Manager dict",
        x,
        x is not None and x >= 3,
        f"{x:.2f}x ({manager:.1f} vs {sqlmon:.1f} us)" if x else "",
    )
    x = ratio(redis, sqlmon)
    target(
        "heartbeat write >= 7x faster than Redis (RQ-style)",
        x,
        x is not None and x >= 7,
        f"{x:.2f}x ({redis:.1f} vs {sqlmon:.1f} us)" if x else "",
    )
    section = "coalesced_beat"
    x = _get(r, "coalesced_beat", "median_us")
    target("coalesced beat <= 0.5 us", x, x is not None and x <= 0.5, f"{x:.3f} us" if x else "")
    section = "tails"
    x = tl.get("p999_us")
    target(
        f"tails p99.9 <= 1 ms at {tl.get('workers')} workers",
        x,
        x is not None and x <= 1000,
        f"{x:.0f} us with the scheduler running (p99 {tl.get('p99_us', 0):.0f} us, max"
        f" {tl.get('max_us', 0):.0f} us; raw sqlite3 under the same load: p99.9"
        f" {tl.get('raw_p999_us', 0):.0f} us, p99 {tl.get('raw_p99_us', 0):.0f} us;"
        f" after the scheduler's SIGKILL: p99.9 {tl.get('dead_p999_us') or 0:.0f} us)"
        if x is not None
        else "",
    )
    x = tl.get("exceptions")
    target(
        "tails: zero exceptions in workers", x, x == 0, f"{x} (missed beats: {tl.get('missed')})"
    )
    x = tl.get("wal_peak_alive_mb")
    target(
        "WAL <= 16 MB, scheduler alive",
        x,
        x is not None and x <= 16,
        f"{x:.1f} MB" if x is not None else "",
    )
    x = tl.get("wal_peak_dead_mb")
    target(
        "WAL <= 64 MB, scheduler dead",
        x,
        x is not None and x <= 64,
        f"{x:.1f} MB" if x is not None else "",
    )
    section = "scheduler_cycle"
    x = ratio(large, small)
    target(
        "cycle at 1M tasks <= 1.3x cycle at 10k",
        x,
        x is not None and x <= 1.3,
        f"{x:.2f}x ({large:.2f} vs {small:.2f} ms)" if x else "",
    )
    x = max(small, large) if small and large else None
    target(
        "cycle median <= 5 ms (10k and 1M tasks)",
        x,
        x is not None and x <= 5,
        f"{small:.2f} ms at 10k, {large:.2f} ms at 1M" if x else "",
    )
    x = max(cpu) if cpu else None
    target(
        "scheduler CPU <= 1% of a core at 1 Hz",
        x,
        x is not None and x <= 0.01,
        f"{x:.2%} (RSS {_get(cyc, 'large', 'rss_mb') or 0:.0f} MB)" if x is not None else "",
    )
    section = "startup"
    sm_ms, sa_ms = st.get("sqlmon_import_ms"), st.get("sqlalchemy_import_ms")
    x = ratio(sm_ms, sa_ms)
    target(
        "import sqlmon <= 1.1x import sqlalchemy",
        x,
        x is not None and x <= 1.1,
        f"{x:.2f}x ({sm_ms:.0f} vs {sa_ms:.0f} ms)" if x else "",
    )
    loaded = st.get("typer_loaded"), st.get("tabulate_loaded")
    x = None if None in loaded else float(any(loaded))
    target(
        "import sqlmon loads neither typer nor tabulate",
        x,
        x == 0.0,
        f"typer {'loaded' if loaded[0] else 'not loaded'}, tabulate "
        f"{'loaded' if loaded[1] else 'not loaded'}",
    )
    section = "post_run"
    hours = pr.get("hours")
    x = pr.get("report_s")
    target(
        f"sqlmon report <= 2 s ({hours} h run)",
        x,
        x is not None and x <= 2,
        f"{x:.2f} s" if x is not None else "",
    )
    x = pr.get("status_s")
    target(
        f"sqlmon status <= 0.5 s ({hours} h run)",
        x,
        x is not None and x <= 0.5,
        f"{x:.2f} s" if x is not None else "",
    )
    section = "startup"
    cmd = st.get("commands", {}).get("bytecode", {})
    inspections = ("status", "check", "runs", "history")
    worst = max((cmd[f"{k}_ratio"], k) for k in inspections) if cmd else None
    x = worst[0] if worst else None
    target(
        "every inspection command <= 1.3x python -c 'import sqlalchemy' (bytecode)",
        x,
        x is not None and x <= 1.3,
        f"{x:.2f}x (slowest: {worst[1]})" if worst else "",
    )
    section = "post_run"
    x = pr.get("history_mb_per_hour")
    target(
        "history <= 5 MB per hour",
        x,
        x is not None and x <= 5,
        f"{x:.2f} MB/h" if x is not None else "",
    )
    section = "record"
    rec = r.get("record", {})
    moving = _get(rec, "transition", "sqlmon", "median_us")
    raw = _get(rec, "transition", "sqlite3_raw", "median_us")
    plain = _get(rec, "transition", "sqlmon_plain_beat", "median_us")
    x = ratio(moving, raw)
    target(
        "transition write (status + stretch) <= 1.15x raw sqlite3",
        x,
        x is not None and x <= 1.15,
        f"{x:.2f}x ({moving:.1f} vs {raw:.1f} us; {ratio(moving, plain) or 0:.2f}x the plain "
        f"beat's {plain or 0:.1f} us)"
        if x
        else "",
    )
    day = rec.get("day", {})
    x = day.get("report_s")
    target(
        f"sqlmon report <= 2 s on stretches ({day.get('hours')} h, {day.get('stretches') or 0:,} "
        "stretches)",
        x,
        x is not None and x <= 2,
        f"{x:.2f} s; record {day.get('bytes_per_million_tasks', 0) / 2**20:.0f} MiB per "
        "million tasks"
        if x is not None
        else "",
    )
    x = _get(rec, "cycle", "median_ms")
    target(
        f"cycle median <= 5 ms at {_get(rec, 'cycle', 'workers')} workers with stretches arriving",
        x,
        x is not None and x <= 5,
        f"{x:.2f} ms (p95 {_get(rec, 'cycle', 'p95_ms') or 0:.2f} ms, "
        f"{_get(rec, 'cycle', 'stretches_per_cycle')} stretches a cycle)"
        if x is not None
        else "",
    )
    section = "live_view"
    lv = r.get("live_view", {})
    for name, path in (("metrics", "/metrics"), ("status", "/api/v1/status")):
        x = _get(lv, name, "p99_ms")
        n = _get(lv, name, "statements_per_request")
        target(
            f"{path} p99 <= 100 ms (1 M tasks, 64 workers)",
            x,
            x is not None and x <= 100,
            f"{x:.1f} ms, {n:.0f} SQL statements" if x is not None else "",
        )
    section = "postgresql"
    pg = r.get("postgresql", {})
    x = pg.get("beat_ratio")
    target(
        "PostgreSQL: beat <= 1.15x raw psycopg (same UPDATE, asynchronous commit)",
        x,
        x is not None and x <= 1.15,
        f"{x:.2f}x ({_get(pg, 'sqlmon_beat', 'median_us'):.1f} vs "
        f"{_get(pg, 'raw_beat', 'median_us'):.1f} us)"
        if x is not None
        else "",
    )
    x = pg.get("hot_share")
    target(
        "PostgreSQL: HOT updates >= 95% of worker_status updates",
        x,
        x is not None and x >= 0.95,
        f"{x:.1%} of {pg.get('worker_status_updates'):,}" if x is not None else "",
    )
    section = "postgresql_fleet"
    fl = r.get("postgresql_fleet", {})
    x = _get(fl, "cycle", "median_ms")
    target(
        f"PostgreSQL: cycle median <= 20 ms at {fl.get('workers')} workers beating at 1 Hz",
        x,
        x is not None and x <= 20,
        f"{x:.1f} ms (p95 {_get(fl, 'cycle', 'p95_ms'):.1f} ms; {fl['cycle_ratio']:.2f}x raw "
        f"psycopg running a quiet cycle's statements, {_get(fl, 'raw_cycle', 'median_ms'):.1f} "
        f"ms; scheduler CPU {fl['scheduler_cpu_share']:.1%}, server "
        f"{fl['server_cpu_share']:.1%}, workers {fl['workers_cpu_share']:.1%} of a core; "
        f"beats missed {_get(fl, 'beats', 'missed')} of {_get(fl, 'beats', 'attempted'):,}; "
        f"other processes meanwhile {cores(fl.get('others_cpu_share', 0))} of a core)"
        if x is not None
        else "",
    )
    section = "postgresql_live_view"
    pl = r.get("postgresql_live_view", {})
    for name, path in (("metrics", "/metrics"), ("status", "/api/v1/status")):
        x = _get(pl, name, "p99_ms")
        n = _get(pl, name, "statements_per_request")
        base = _get(r, "live_view", name, "p99_ms")
        target(
            f"PostgreSQL: {path} p99 <= 100 ms (1 M tasks, 64 workers)",
            x,
            x is not None and x <= 100,
            f"{x:.1f} ms, {n:.0f} SQL statements"
            + (f" ({x / base:.2f}x SQLite's {base:.1f} ms in this run)" if base else "")
            if x is not None
            else "",
        )
    return out


def render(r: dict[str, Any]) -> str:
    lines = [
        f"sqlmon benchmark ({r['sizes']}), {r['machine']['cores']} cores, Python "
        f"{r['machine']['python']}, SQLite {r['machine']['sqlite']}, SQLAlchemy "
        f"{r['machine']['sqlalchemy']}, {r['machine']['filesystem']}; {r['total_s']:.0f} s",
        "",
    ]
    hw = r.get("heartbeat_write")
    if hw:
        lines.append("heartbeat write (category changes)   median us   p99 us")
    for name in ("sqlmon", "sqlite3_raw", "manager_dict", "redis") if hw else ():
        v = hw.get(name)
        lines.append(
            f"  {name:<35}"
            + (
                f"{v['median_us']:>9.1f} {v['p99_us']:>8.1f}"
                if v
                else "   not measured (no redis-server on PATH)"
            )
        )
    if "coalesced_beat" in r:
        lines.append(f"coalesced beat: {r['coalesced_beat']['median_us']:.3f} us")
    t = r.get("tails")
    if t:
        lines.append(
            f"tails, {t['workers']} workers, {t['beats_per_s']:.0f} beats/s:"
            f" p50 {t['p50_us']:.0f} us,"
            f" p99 {t['p99_us']:.0f} us, p99.9 {t['p999_us']:.0f} us, max {t['max_us']:.0f} us"
            f" (scheduler running; after its SIGKILL p99.9 {t['dead_p999_us'] or 0:.0f} us);"
            f" missed {t['missed']}, exceptions {t['exceptions']}; WAL peak"
            f" {t['wal_peak_alive_mb']:.1f} MB alive, {t['wal_peak_dead_mb']:.1f} MB dead"
        )
    c = r.get("scheduler_cycle")
    for label in ("small", "large") if c else ():
        v = c[label]
        lines.append(
            f"scheduler cycle, {v['rows']:>9,} tasks ({c['pending']:,} pending), {c['workers']} "
            f"workers: median {v['median_ms']:.2f} ms, p95 {v['p95_ms']:.2f} ms, CPU at 1 Hz "
            + (
                f"{v['cpu_share']:.2%}, RSS {v['rss_mb']:.0f} MB"
                if v["cpu_share"] is not None
                else "not measured"
            )
        )
    s = r.get("startup", {})
    if s:
        lines.append(
            f"start-up: import sqlalchemy {s['sqlalchemy_import_ms']:.0f} ms"
            f" ({s['sqlalchemy_rss_mb']:.0f} MB); import sqlmon {s['sqlmon_import_ms']:.0f} ms,"
            f" + Heartbeat {s['sqlmon_import_and_heartbeat_ms']:.0f} ms"
            f" ({s['sqlmon_rss_mb']:.0f} MB)"
        )
    for kind, c in s.get("commands", {}).items():
        lines.append(
            f"commands ({kind}): python -c 'import sqlalchemy' {c['sqlalchemy_ms']:.0f} ms; "
            + ", ".join(
                f"{k} {c[k + '_ms']:.0f} ms ({c[k + '_ratio']:.2f}x)"
                for k in ("status", "check", "runs", "history", "help")
            )
        )
    p = r.get("post_run")
    if p:
        lines.append(
            f"post-run, {p['hours']} h ({p['snapshots']:,} snapshots, {p['events']:,} events):"
            " report "
            + (
                f"{p['report_s']:.2f} s"
                if p["report_s"] is not None
                else f"failed: {p['report_error']}"
            )
            + ", status "
            + (
                f"{p['status_s']:.2f} s"
                if p["status_s"] is not None
                else f"failed: {p['status_error']}"
            )
            + f"; history {p['history_mb_per_hour']:.2f} MB/hour"
        )
    lv = r.get("live_view")
    if lv:
        for name, path in (("metrics", "/metrics"), ("status", "/api/v1/status")):
            v = lv[name]
            lines.append(
                f"live view {path}, {lv['tasks']:,} tasks ({lv['pending']:,} pending), "
                f"{lv['workers']} workers, {lv['snapshots']:,} snapshots: median "
                f"{v['median_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms, max {v['max_ms']:.1f} ms, "
                f"{v['statements_per_request']:.0f} statements, {v['bytes']:,} bytes"
            )
    from . import pgfleet, pglive, postgres

    if "postgresql" in r:
        lines.append(postgres.render(r["postgresql"]).strip("\n"))
    if "postgresql_fleet" in r:
        lines.append(pgfleet.render(r["postgresql_fleet"]))
    if "postgresql_live_view" in r:
        lines.append(pglive.render(r["postgresql_live_view"], r.get("live_view")))
    lines += ["", "targets:"]
    for t in r["targets"]:
        mark = {True: "met    ", False: "MISSED ", None: "n/a    "}[t["met"]]
        lines.append(f"  {mark} {t['target']}: {t['figure']}")
    return "\n".join(lines)
