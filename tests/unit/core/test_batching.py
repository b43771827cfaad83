import pytest

from worker.core.batching import BatchWindow


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_batch_closes_when_full():
    clock = FakeClock()
    window = BatchWindow(max_records=10, max_wait_seconds=5.0, clock=clock)
    window.add(6)
    assert not window.ready() and window.room == 4
    window.add(4)
    assert window.ready() and window.room == 0


def test_batch_closes_after_max_wait_from_its_first_record():
    clock = FakeClock()
    window = BatchWindow(max_records=10, max_wait_seconds=0.5, clock=clock)
    assert window.remaining_seconds() == 0.5  # empty: wait the full time
    clock.now += 10  # time passing while empty does not count
    window.add(1)
    assert window.remaining_seconds() == 0.5
    clock.now += 0.3
    window.add(1)
    assert window.remaining_seconds() == pytest.approx(0.2)
    assert not window.ready()
    clock.now += 0.2
    assert window.ready()


def test_empty_batch_is_never_ready_and_reset_starts_over():
    clock = FakeClock()
    window = BatchWindow(max_records=2, max_wait_seconds=0.1, clock=clock)
    clock.now += 5
    assert not window.ready()
    window.add(2)
    window.reset()
    assert window.count == 0 and not window.ready() and window.opened_at is None


def test_rejects_nonsense_limits():
    with pytest.raises(ValueError):
        BatchWindow(0, 1.0)
    with pytest.raises(ValueError):
        BatchWindow(1, 0.0)
