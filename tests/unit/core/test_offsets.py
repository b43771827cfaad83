from worker.core.offsets import OffsetTracker


def test_commits_the_offset_after_the_last_processed_record():
    tracker = OffsetTracker()
    tracker.mark(("in", 0), 9)
    tracker.mark(("in", 1), 0)
    assert tracker.to_commit() == {("in", 0): 10, ("in", 1): 1}


def test_never_moves_backwards_and_skips_what_is_committed():
    tracker = OffsetTracker()
    tracker.mark(("in", 0), 9)
    tracker.mark(("in", 0), 3)
    assert tracker.position(("in", 0)) == 10
    tracker.committed({("in", 0): 10})
    assert tracker.to_commit() == {}
    tracker.mark(("in", 0), 12)
    assert tracker.to_commit() == {("in", 0): 13}


def test_selected_and_forgotten_partitions():
    tracker = OffsetTracker()
    tracker.mark(("in", 0), 1)
    tracker.mark(("in", 1), 1)
    assert tracker.to_commit([("in", 1), ("in", 7)]) == {("in", 1): 2}
    tracker.forget([("in", 1)])
    assert tracker.to_commit() == {("in", 0): 2}
