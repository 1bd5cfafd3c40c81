"""The judge, one cycle at a time, with the clock passed in (the only thing not real)."""

from __future__ import annotations

import multiprocessing
import os
import socket

from sqlmon import identity
from sqlmon.judge import Backends, Judge, Observation, WorkerRow

HOST = socket.gethostname()
PID = os.getpid()
START = identity.start_time(PID)


def row(
    wid="w",
    category=None,
    beats=1,
    hb=1000.0,
    since=None,
    started=990.0,
    exited=None,
    pid=PID,
    pid_start=START,
    pool="gpu",
) -> WorkerRow:
    return WorkerRow(
        wid,
        pid,
        pid_start,
        HOST,
        pool,
        category,
        since if since is not None else started,
        hb,
        started,
        beats,
        exited,
    )


def monitor(**kw) -> Judge:
    settings = dict(interval=1.0, stale_after=10.0, warn_after=30.0, idle_confirm=2, host=HOST)
    settings.update(kw)
    return Judge(**settings)


def obs(t, workers=(), backlog=None, high=5, error=None) -> Observation:
    return Observation(
        read_started=t, workers=list(workers), backlog=backlog or {}, high_water=high, error=error
    )


def events(cycle):
    return [(e.worker_id, e.event, e.category) for e in cycle.events]


def test_the_judge_records_liveness_and_a_death_closes_the_open_stretch() -> None:
    m = monitor()
    c = m.judge(obs(1000, [row(category="OCR", since=995.0, beats=2)]), 1000.0, 0.0)
    # What a worker does is its own record: the judge says only that it joined.
    assert events(c) == [("w", "joined", None)]
    assert [(j.worker_id, j.state, j.since) for j in c.judged] == [("w", "alive", 990.0)]
    assert c.workers[0].state == "busy"
    c = m.judge(obs(1001, [row(category="PLATE", since=1000.5, beats=3)]), 1001.0, 1.0)
    assert events(c) == [] and c.closes == []
    # Its process gone mid-task: dead, with the evidence, and its stretch ends at the death.
    m = monitor()
    gone = 2**22 + 4321
    c = m.judge(obs(1002, [row(pid=gone, category="OCR", since=1001.6)]), 1002.0, 2.0)
    assert events(c) == [("w", "joined", None), ("w", "dead", "OCR")]
    assert [(j.state, j.evidence) for j in c.judged] == [("alive", None), ("dead", "pid_gone")]
    assert [(x.category, x.started, x.ended) for x in c.closes] == [("OCR", 1001.6, 1002.0)]


def test_joined_and_exited_between_two_cycles_gets_both_events() -> None:
    m = monitor()
    m.judge(obs(1000), 1000.0, 0.0)
    c = m.judge(obs(1001, [row(started=1000.2, exited=1000.8, hb=1000.8)]), 1001.0, 1.0)
    assert events(c) == [("w", "joined", None), ("w", "exited", None)]
    assert c.workers[0].state == "exited"
    c = m.judge(obs(1002, [row(started=1000.2, exited=1000.8, hb=1000.8)]), 1002.0, 2.0)
    assert events(c) == []


def test_stale_uses_the_monotonic_clock_not_the_wall_clock() -> None:
    m = monitor(stale_after=3.0, warn_after=3.0)
    m.judge(obs(1000, [row(beats=1, hb=1000.0)]), 1000.0, 0.0)
    # The wall clock jumps an hour ahead while beats keep moving: nobody is stale.
    for i in range(1, 6):
        c = m.judge(obs(4600 + i, [row(beats=1 + i, hb=1000.0 + i)]), 4600.0 + i, float(i))
        assert c.workers[0].state == "idle"
        assert events(c) == []
    # Beats stop: stale once 3 s pass on the monotonic clock, whatever the wall clock says.
    c = m.judge(obs(900, [row(beats=6)]), 900.0, 7.0)
    assert events(c) == []
    c = m.judge(obs(901, [row(beats=6)]), 901.0, 8.0)
    assert events(c) == [("w", "stale", None)]
    c = m.judge(obs(902, [row(beats=7)]), 902.0, 9.0)
    assert events(c) == [("w", "recovered", None)]


def test_just_after_start_the_heartbeat_age_stands_in() -> None:
    m = monitor(stale_after=3.0)
    c = m.judge(obs(1000, [row(hb=990.0, category="OCR")]), 1000.0, 50.0)
    assert ("w", "stale", "OCR") in events(c)
    assert c.not_idle_reason == "w stale for 10 s in OCR"


def test_dead_when_the_pid_is_gone_and_when_it_was_reused() -> None:
    child = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    child.start()
    child.join()
    m = monitor()
    c = m.judge(
        obs(1000, [row("gone", pid=child.pid, pid_start=START, category="OCR")]), 1000.0, 0.0
    )
    assert events(c)[-1] == ("gone", "dead", "OCR")
    # This very process, but recorded with another start time: the pid was reused.
    c = m.judge(obs(1001, [row("reused", pid=PID, pid_start=(START or 0) - 100)]), 1001.0, 1.0)
    assert events(c)[-1] == ("reused", "dead", None)
    assert {w.worker_id: w.state for w in c.workers} == {"reused": "dead"}


def test_a_dead_worker_holds_nothing_and_a_stale_one_holds_its_category() -> None:
    m = monitor(stale_after=2.0)
    dead = row("dead", pid=2**22 + 12345, category="OCR")
    for t in range(4):
        c = m.judge(obs(1000 + t, [dead, row("stuck", category="SUMMARY")]), 1000.0 + t, t)
    assert {w.worker_id: w.state for w in c.workers} == {"dead": "dead", "stuck": "stale"}
    assert not c.idle and c.not_idle_reason == "stuck stale for 3 s in SUMMARY"


def test_idle_needs_confirming_cycles_with_the_same_high_water_mark() -> None:
    m = monitor(idle_confirm=2)
    c = m.judge(obs(1000, high=5), 1000.0, 0.0)
    assert not c.idle and c.not_idle_reason == "confirming idle (1/2)"
    c = m.judge(obs(1001, high=6), 1001.0, 1.0)  # a task came and went between polls
    assert not c.idle
    c = m.judge(obs(1002, high=6), 1002.0, 2.0)
    assert c.idle and c.verdict_since == 1001 and c.idle_since == 1001
    c = m.judge(obs(1003, high=6), 1003.0, 3.0)
    assert c.idle and c.verdict_since == 1002 and c.idle_since == 1001


def test_work_of_any_kind_means_not_idle() -> None:
    m = monitor(idle_confirm=1)
    c = m.judge(obs(1000, backlog={("gpu", "OCR"): (3, 0)}), 1000.0, 0.0)
    assert c.not_idle_reason == "3 tasks pending in OCR"
    # A claimed task whose worker has not yet written its category: running counts.
    c = m.judge(obs(1001, backlog={("gpu", "OCR"): (0, 1)}), 1001.0, 1.0)
    assert c.not_idle_reason == "1 task running in OCR"
    c = m.judge(obs(1002, [row("gpu-1", category="OCR")]), 1002.0, 2.0)
    assert c.not_idle_reason == "gpu-1 busy in OCR"
    c = m.judge(obs(1003, error="disk I/O error"), 1003.0, 3.0)
    assert c.not_idle_reason == "read failed: disk I/O error"
    c = m.judge(obs(1004), 1004.0, 4.0)
    assert c.idle


def test_a_late_cycle_judges_no_death_and_no_idle() -> None:
    m = monitor(idle_confirm=1)
    gone = row("gone", pid=2**22 + 54321)
    c = m.judge(obs(1000), 1000.0, 0.0)
    assert c.idle
    c = m.judge(obs(1030, [gone]), 1030.0, 30.0)  # the scheduler itself was paused 30 s
    assert c.late and not c.idle
    assert c.not_idle_reason.startswith("scheduler cycle came 30.0 s after the last")
    assert [e for e in events(c) if e[1] == "dead"] == []
    c = m.judge(obs(1031, [gone]), 1031.0, 31.0)
    assert ("gone", "dead", None) in events(c)


def test_a_new_incarnation_under_the_same_id() -> None:
    m = monitor()
    m.judge(obs(1000, [row(pid=PID, started=990.0)]), 1000.0, 0.0)
    c = m.judge(obs(1001, [row(pid=PID, started=1000.5, beats=1)]), 1001.0, 1.0)
    assert events(c) == [("w", "dead", None), ("w", "joined", None)]
    assert "new incarnation" in c.events[-1].detail


def test_event_times_stay_inside_the_cycle_window_when_worker_clocks_jump() -> None:
    m = monitor()
    m.judge(obs(1000), 1000.0, 0.0)
    c = m.judge(obs(1001, [row(started=4600.0, beats=1)]), 1001.0, 1.0)
    assert [e.ts for e in c.events] == [1001.0]
    c = m.judge(obs(1002, [row(started=-3600.0, beats=1)]), 1002.0, 2.0)
    assert [e.ts for e in c.events] == [1001.0, 1001.0]  # the old one's death, the new join


def test_restart_does_not_repeat_an_exit() -> None:
    m = monitor()
    m.seed([("w", "exited")])
    c = m.judge(obs(1000, [row(exited=995.0)]), 1000.0, 0.0)
    assert events(c) == [] and c.workers[0].state == "exited"


def test_restart_does_not_repeat_a_death() -> None:
    m = monitor()
    m.seed([("gone", "dead")])
    c = m.judge(obs(1000, [row("gone", pid=2**22 + 999)]), 1000.0, 0.0)
    assert events(c) == [] and c.workers[0].state == "dead"


def test_a_death_is_warned_about_once_per_episode() -> None:
    m = monitor()
    gone = row("gone", pid=2**22 + 77, category="OCR")
    warned = [
        w for t in range(3) for w in m.judge(obs(1000 + t, [gone]), 1000.0 + t, float(t)).warnings
    ]
    assert warned == [f"worker gone is dead: pid {2**22 + 77} is gone (in OCR)"]


def test_a_stale_episode_is_warned_about_once_after_warn_after() -> None:
    m = monitor(stale_after=2.0, warn_after=4.0)
    m.judge(obs(1000, [row(beats=1, hb=1000.0, category="OCR")]), 1000.0, 0.0)
    warned = [
        w
        for t in range(1, 8)
        for w in m.judge(
            obs(1000 + t, [row(beats=1, category="OCR")]), 1000.0 + t, float(t)
        ).warnings
    ]
    assert warned == [f"worker w (pid {PID}) has been stale for 4 s in OCR"]


def test_a_host_name_two_machines_share_is_judged_without_its_boot() -> None:
    m = monitor(boot_id="mine", booted_at=500.0)

    def two(beats: int, t: float) -> list[WorkerRow]:
        return [
            row("a", beats=beats, hb=t)._replace(host="h", boot_id="boot-1"),
            row("b", started=995.0, beats=beats, hb=t)._replace(host="h", boot_id="boot-2"),
        ]

    m.judge(obs(1000, two(1, 1000.0)), 1000.0, 0.0)
    # The worker of the older boot beats after the newer one started: no reboot happened.
    c = m.judge(obs(1001, two(2, 1001.0)), 1001.0, 1.0)
    assert c.warnings == [
        "host name h is used by machines with different boot ids: deaths there are judged "
        "without their boot"
    ]
    c = m.judge(obs(1002, two(2, 1001.0)), 1002.0, 2.0)
    assert [w.state for w in c.workers] == ["idle", "idle"] and events(c) == []


def test_this_hosts_name_with_another_boot_is_checked_by_its_boot() -> None:
    gone = 2**22 + 4321
    m = monitor(boot_id="mine", booted_at=995.0)
    before = row("old", pid=PID, started=990.0)._replace(boot_id="earlier")
    other = row("twin", pid=gone, started=998.0)._replace(boot_id="elsewhere")
    c = m.judge(obs(1000, [before, other]), 1000.0, 0.0)
    # Started before this host's boot, under another boot id: dead, whatever its pid says now.
    # Started after it, under another boot id: another machine with this name, not checked
    # by pid (which would say gone).
    assert [(j.worker_id, j.state, j.evidence) for j in c.judged] == [
        ("old", "alive", None),
        ("old", "dead", "boot_id_changed"),
        ("twin", "alive", None),
    ]


def test_a_connection_counts_as_gone_only_in_cycles_that_looked_for_it() -> None:
    m = monitor()
    far = row("r", beats=1)._replace(host="far-away", backend="4242@7.5")

    def look(t: float, asked: frozenset[int]):
        seen = Backends("7.5", frozenset(), asked)  # 4242 missing wherever it was looked for
        return m.judge(
            Observation(read_started=t, workers=[far], backlog={}, high_water=5, backends=seen),
            t,
            t - 1000.0,
        )

    look(1000.0, frozenset())
    # Beats standing still, the connection missing from two looks that did not include it:
    # no evidence, the worker lives on.
    assert events(look(1001.0, frozenset({17}))) == []
    assert events(look(1002.0, frozenset({17}))) == []
    # Looked for, and missing twice: dead.
    assert events(look(1003.0, frozenset({4242}))) == []
    c = look(1004.0, frozenset({4242}))
    assert [(j.state, j.evidence) for j in c.judged] == [("dead", "backend_gone")]


def test_only_a_worker_whose_beats_stood_still_over_two_reads_is_looked_for() -> None:
    m = monitor()

    def far(wid: str, beats: int, pid: int) -> WorkerRow:
        return row(wid, beats=beats)._replace(host="far-away", backend=f"{pid}@7.5")

    assert m.suspects([far("b", 1, 11), far("s", 1, 22)]) == []  # never judged yet
    # Beats of "s" as read at each cycle; "b" beats every time. Its first read, which shows no
    # movement, counts as one without a beat.
    s_beats = [1, 1, 2, 2, 2, 2]
    looked = []
    for k, beats in enumerate(s_beats):
        rows = [far("b", 1 + k, 11), far("s", beats, 22)]
        looked.append(m.suspects(rows))
        m.judge(obs(1000 + k, rows), 1000.0 + k, float(k))
    # Still at reads 0-1: looked for at 1. It beat at 2; one read without a beat (3) is
    # jitter; from the second (4) on, looked for again. "b" never.
    assert looked == [[], [22], [], [], [22], [22]]
