"""The one rule that clips a stretch to a run's window: pure, tested against exact sums."""

from __future__ import annotations

from sqlmon.stretches import Total, Window, clip, fold

INF = float("inf")


def test_clip_keeps_only_the_overlap() -> None:
    w = Window(2, 100.0, 200.0)
    assert clip(90.0, 110.0, w) == (100.0, 110.0)
    assert clip(150.0, 250.0, w) == (150.0, 200.0)
    assert clip(120.0, 130.0, w) == (120.0, 130.0)
    assert clip(50.0, 100.0, w) is None  # touches the start only
    assert clip(200.0, 210.0, w) is None  # starts at the end
    assert clip(150.0, 150.0, w) == (150.0, 150.0)  # an instant inside


def test_a_stretch_across_a_restart_is_split_and_counted_once_as_a_task() -> None:
    runs = [Window(2, 100.0, INF), Window(1, 0.0, 90.0)]
    got = fold(
        [
            (1, "w", "OCR", 80.0, 110.0, "ok"),  # busy through the gap between the runs
            (2, "w", None, 110.0, 112.5, "ok"),
            (3, "w", "OCR", 112.5, 113.0, "failed"),
            (4, "w", "OCR", 40.0, 50.0, "ok"),  # wholly in run 1 (folded late)
            (5, "w", None, 91.0, 95.0, "ok"),  # between runs: in none
        ],
        runs,
    )
    assert got == {
        (1, "w", "OCR", "busy", "ok"): Total(1, 20.0, 40.0, 90.0),  # 10 + 10; the task of 4
        (2, "w", "OCR", "busy", "ok"): Total(1, 10.0, 100.0, 110.0),  # ended in run 2
        (2, "w", "", "idle", "ok"): Total(1, 2.5, 110.0, 112.5),
        (2, "w", "OCR", "busy", "failed"): Total(1, 0.5, 112.5, 113.0),
    }
    # Folding in two batches gives the same sums as one.
    first = fold([(1, "w", "OCR", 80.0, 110.0, "ok")], runs)
    assert fold([(4, "w", "OCR", 40.0, 50.0, "ok")], runs, first)[
        (1, "w", "OCR", "busy", "ok")
    ] == (Total(1, 20.0, 40.0, 90.0))
