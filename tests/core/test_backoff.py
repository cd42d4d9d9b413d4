"""The one backoff (NVML, each GPU, each model server): the delays double from first_s to max_s, one success
starts over, and `ready()` opens exactly when the delay has passed on the injected clock."""

from __future__ import annotations

import pytest

from app.core.backoff import Backoff
from app.core.gpu.simulated import ManualClock


def test_the_delays_double_to_the_cap_and_a_success_starts_over() -> None:
    backoff = Backoff(first_s=2, max_s=60, clock=ManualClock())
    assert [backoff.failed() for _ in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert backoff.failures == 7
    backoff.succeeded()
    assert backoff.failures == 0
    assert backoff.failed() == 2


def test_a_cap_that_is_not_a_power_of_two_of_the_first_delay() -> None:
    backoff = Backoff(first_s=0.5, max_s=3, clock=ManualClock())
    assert [backoff.failed() for _ in range(5)] == [0.5, 1, 2, 3, 3]


def test_ready_opens_when_the_delay_has_passed_on_the_clock() -> None:
    clock = ManualClock(100.0)
    backoff = Backoff(first_s=1, max_s=8, clock=clock)
    assert backoff.ready()  # nothing failed yet
    assert backoff.failed() == 1
    assert not backoff.ready()
    clock.advance(0.999)
    assert not backoff.ready()
    clock.advance(0.001)
    assert backoff.ready()
    assert backoff.failed() == 2
    assert backoff.retry_at == pytest.approx(103.0)
    backoff.succeeded()
    assert backoff.ready()


@pytest.mark.parametrize(("first_s", "max_s"), [(0, 60), (-1, 60), (10, 5)])
def test_a_backoff_that_would_not_wait_or_shrink_is_refused(first_s: float, max_s: float) -> None:
    with pytest.raises(ValueError, match="first_s"):
        Backoff(first_s=first_s, max_s=max_s)
