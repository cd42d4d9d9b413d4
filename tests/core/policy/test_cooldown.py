"""ResumeWindow: the cooldown before a reload, one reload per window, doubling, the cap, the calm reset."""

from __future__ import annotations

from app.core.policy.cooldown import ResumeWindow


def window() -> ResumeWindow:
    return ResumeWindow(base_s=30.0, max_s=600.0, calm_reset_s=3600.0)


def test_nothing_holds_a_fresh_window_back() -> None:
    w = window()
    assert w.cooldown_s == 30.0
    assert w.ready_at() is None


def test_the_cooldown_counts_from_the_last_tick_a_signal_held() -> None:
    w = window()
    for t in (100.0, 100.1, 100.2):
        w.observe(t, contention=True, hold=False)
    w.observe(100.3, contention=False, hold=False)
    assert w.ready_at() == 130.2
    w.observe(101.0, contention=False, hold=True)  # a pause / battery hold also keeps the models out
    assert w.ready_at() == 131.0


def test_at_most_one_reload_per_window() -> None:
    w = window()
    w.observe(0.0, contention=True, hold=False)
    w.observe(40.0, contention=False, hold=False)
    w.reloaded(40.0)
    assert w.ready_at() == 70.0  # even with no signal since, the next reload waits a whole window


def test_a_signal_returning_within_the_window_after_a_reload_doubles_it_once_per_reload() -> None:
    w = window()
    w.observe(0.0, contention=True, hold=False)
    w.observe(31.0, contention=False, hold=False)
    w.reloaded(31.0)
    assert w.observe(40.0, contention=True, hold=False) is True
    assert w.cooldown_s == 60.0
    w.observe(41.0, contention=False, hold=False)
    assert w.observe(45.0, contention=True, hold=False) is False  # same premature reload: no second doubling
    assert w.cooldown_s == 60.0
    w.observe(199.0, contention=False, hold=False)
    w.reloaded(200.0)
    assert w.observe(230.0, contention=True, hold=False) is True
    assert w.cooldown_s == 120.0


def test_a_signal_after_the_window_does_not_grow_it() -> None:
    w = window()
    w.reloaded(0.0)
    assert w.observe(31.0, contention=True, hold=False) is False
    assert w.cooldown_s == 30.0


def test_the_window_never_exceeds_the_maximum() -> None:
    w = window()
    t = 0.0
    for _ in range(10):
        w.reloaded(t)
        w.observe(t + 1, contention=True, hold=False)
        w.observe(t + 2, contention=False, hold=False)
        t += 1000.0
    assert w.cooldown_s == 600.0


def test_an_hour_of_calm_resets_the_window() -> None:
    w = window()
    w.reloaded(0.0)
    w.observe(1.0, contention=True, hold=False)
    assert w.cooldown_s == 60.0
    w.observe(3600.0, contention=False, hold=False)
    assert w.cooldown_s == 60.0  # 3599 s of calm: not yet
    w.observe(3601.0, contention=False, hold=False)
    assert w.cooldown_s == 30.0


def test_the_users_eviction_restarts_the_cooldown_without_growing_it() -> None:
    w = window()
    w.restart(500.0)
    assert w.ready_at() == 530.0
    assert w.cooldown_s == 30.0


def test_new_settings_clamp_the_current_window() -> None:
    w = window()
    w.reloaded(0.0)
    w.observe(1.0, contention=True, hold=False)
    w.configure(base_s=10.0, max_s=40.0, calm_reset_s=60.0)
    assert w.cooldown_s == 40.0
    w.configure(base_s=90.0, max_s=600.0, calm_reset_s=60.0)
    assert w.cooldown_s == 90.0
