"""A model GPU with foreign applications, dying clients and an NVML view that lags: the ledger never
over-commits.

The model keeps the truth at every clock reading (integer steps): F(t), the bytes foreign applications hold,
and O(t), the bytes our holders have really allocated. A sample "taken at t" reports the state at the
*start* of step t, before anything done at that same clock reading (the worst case the lag rule must
survive), and is delivered to the ledger 0 to 6 steps late, sometimes out of order, sometimes with the list
of live processes. C(now) is everything of ours that is or will be in VRAM: reservations admitted and not
yet released, allocated or still pending (an abandoned one leaves C when its TTL runs out, a dead client's
when it dies, since the driver frees its memory).

Invariants, with T = total, H = headroom, s = the last sample the ledger accepted:
  I1  available_bytes() <= T - H - F(s) - C(now): the ledger never believes more is free than truly is,
      given the foreign usage NVML last showed; so every admission (nbytes <= available) satisfies
  I2  C(after) + F(s) + H <= T at the moment of admission, also for a burst of threads racing to admit;
  I3  real use stays within the headroom while foreign usage is only what NVML showed: let s* be the sample
      behind the latest admission among our live reservations; if F(now) <= F(s*) then
      C(now) + F(now) <= T - H. In particular an allocation of ours can only fail (out of memory in the
      model) when a foreign application grew after the sample its admission relied on.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from app.core.config import Settings
from app.core.errors import InsufficientVram
from app.core.gpu.simulated import ManualClock
from app.core.residency.ledger import Ledger, Reservation
from app.core.units import GiB, MiB

SIZES = st.one_of(
    st.integers(min_value=1, max_value=24 * GiB),
    st.sampled_from([256 * MiB, 512 * MiB, 1 * GiB, 2 * GiB, 4 * GiB, 6 * GiB, 8 * GiB]),
)
PICK = st.integers(min_value=0, max_value=1_000)
CLIENT_PIDS = (101, 102, 103)


@dataclass
class Ours:
    """One of our reservations, as the model sees it."""

    nbytes: int
    pid: int | None
    expires_at: float | None
    admitted_seq: int  # order of admission (a racing burst shares one number)
    admitted_sample_at: float  # the sample the ledger had when it admitted this
    resident: bool = False


class LaggingGpu(RuleBasedStateMachine):
    @initialize(
        total_gib=st.sampled_from([8, 12, 16, 24, 80]),
        reserved=st.sampled_from([0, 512 * MiB, 2 * GiB]),
        percent=st.sampled_from([0.0, 5.0, 10.0, 25.0]),
        foreign_fraction=st.floats(min_value=0.0, max_value=1.0),
    )
    def start(self, total_gib: int, reserved: int, percent: float, foreign_fraction: float) -> None:
        self.clock = ManualClock()
        self.total = total_gib * GiB
        policy = Settings(reserved_system_vram=reserved, headroom_percent=percent)
        self.headroom = policy.headroom_bytes(self.total)
        self.ledger = Ledger(0, headroom_bytes=policy.headroom_bytes, clock=self.clock)
        self.foreign = int(self.total * foreign_fraction)
        self.ours_real = 0
        self.history: dict[float, tuple[int, int]] = {0.0: (self.foreign, 0)}  # t -> (F, O) at start of t
        self.live: dict[str, Ours] = {}
        self.alive_pids = set(CLIENT_PIDS)
        self.admissions = 0
        self.deliver(0.0, live_pids=None)
        assert self.ledger.headroom() == self.headroom

    # --- helpers --------------------------------------------------------------------------------------

    def deliver(self, sampled_at: float, live_pids: set[int] | None) -> None:
        foreign, ours = self.history[sampled_at]
        self.ledger.observe(
            total_bytes=self.total,
            free_bytes=self.total - foreign - ours,
            sampled_at=sampled_at,
            live_pids=live_pids,
        )

    def committed(self) -> int:
        return sum(r.nbytes for r in self.live.values())

    def seen_foreign(self) -> int:
        sampled_at = self.ledger.last_sample_at()
        assert sampled_at is not None
        return self.history[sampled_at][0]

    def admitted(self, reservation: Reservation, seq: int) -> None:
        sampled_at = self.ledger.last_sample_at()
        assert sampled_at is not None
        self.live[reservation.id] = Ours(
            nbytes=reservation.nbytes,
            pid=reservation.pid,
            expires_at=reservation.expires_at,
            admitted_seq=seq,
            admitted_sample_at=sampled_at,
        )

    # Rules pick by position in admission order and do nothing when there is nothing to pick: ids are
    # random and which racer wins depends on the scheduler, so no precondition may depend on them.
    def pending_ids(self) -> list[str]:
        return [i for i, r in self.live.items() if not r.resident]

    def resident_ids(self) -> list[str]:
        return [i for i, r in self.live.items() if r.resident]

    def check_admission(self) -> None:
        """I2."""
        assert self.committed() + self.seen_foreign() + self.headroom <= self.total

    # --- time and NVML ----------------------------------------------------------------------------

    @rule(steps=st.integers(min_value=1, max_value=3))
    def tick(self, steps: int) -> None:
        for _ in range(steps):
            self.clock.now_s += 1.0
            self.history[self.clock.now_s] = (self.foreign, self.ours_real)
            for rid, ours in list(self.live.items()):  # abandoned clients: their TTL ran out
                if not ours.resident and ours.expires_at is not None and self.clock.now_s >= ours.expires_at:
                    del self.live[rid]
                    event("a reservation expired by TTL")

    @rule(lag=st.integers(min_value=0, max_value=6), with_pids=st.booleans())
    def sample(self, lag: int, with_pids: bool) -> None:
        sampled_at = max(0.0, self.clock.now_s - lag)
        before = self.ledger.last_sample_at()
        assert before is not None
        self.deliver(sampled_at, live_pids=set(self.alive_pids) | {1} if with_pids else None)
        assert self.ledger.last_sample_at() == max(before, sampled_at)
        if sampled_at < before:
            event("an out-of-order sample was ignored")

    # --- our side ---------------------------------------------------------------------------------

    @rule(
        nbytes=SIZES,
        client=st.sampled_from([None, *CLIENT_PIDS]),
        ttl_s=st.one_of(st.none(), st.integers(min_value=1, max_value=5)),
    )
    def reserve(self, nbytes: int, client: int | None, ttl_s: int | None) -> None:
        if client is not None and client not in self.alive_pids:
            client = None
        available = self.ledger.available_bytes()
        try:
            reservation = self.ledger.reserve(nbytes, "model", pid=client, ttl_s=ttl_s)
        except InsufficientVram as exc:
            assert nbytes > available
            assert exc.needed_bytes == nbytes
            assert exc.available_bytes == available
            event("refused")
            return
        assert nbytes <= available
        self.admissions += 1
        self.admitted(reservation, self.admissions)
        self.check_admission()
        event("admitted")

    @rule()
    def reserve_exactly_what_is_available(self) -> None:
        available = self.ledger.available_bytes()
        if available <= 0:
            return
        reservation = self.ledger.reserve(available, "exact fit")
        self.admissions += 1
        self.admitted(reservation, self.admissions)
        self.check_admission()
        assert self.ledger.available_bytes() == 0

    @rule(sizes=st.lists(SIZES, min_size=2, max_size=6))
    def racing_threads(self, sizes: list[int]) -> None:
        available = self.ledger.available_bytes()
        barrier = threading.Barrier(len(sizes))
        winners: list[Reservation] = []
        losers: list[tuple[int, InsufficientVram]] = []
        results = threading.Lock()

        def load(nbytes: int) -> None:
            barrier.wait()
            try:
                reservation = self.ledger.reserve(nbytes, "racer")
            except InsufficientVram as exc:
                with results:
                    losers.append((nbytes, exc))
            else:
                with results:
                    winners.append(reservation)

        threads = [threading.Thread(target=load, args=(n,)) for n in sizes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert len(winners) + len(losers) == len(sizes)
        admitted_bytes = sum(r.nbytes for r in winners)
        assert admitted_bytes <= max(available, 0)
        assert self.ledger.available_bytes() == available - admitted_bytes
        for nbytes, exc in losers:
            # refused against what was left at that moment: at least what is left after every winner
            assert available - admitted_bytes <= exc.available_bytes < nbytes
        if winners:
            self.admissions += 1
            for reservation in winners:
                self.admitted(reservation, self.admissions)
            self.check_admission()
        if winners and losers:
            event("a race with winners and losers")

    @rule(pick=PICK)
    def allocate(self, pick: int) -> None:
        ids = self.pending_ids()
        if not ids:
            return
        rid = ids[pick % len(ids)]
        ours = self.live[rid]
        if self.ours_real + ours.nbytes + self.foreign <= self.total:
            self.ours_real += ours.nbytes
            ours.resident = True
            self.ledger.mark_allocated(rid)
            event("allocated")
        else:  # out of memory: a foreign application took it after admission
            latest = max(self.live.values(), key=lambda r: r.admitted_seq)
            assert self.foreign > self.history[latest.admitted_sample_at][0], "OOM without foreign growth"
            del self.live[rid]
            self.ledger.release(rid)
            self.ledger.count_failure("cuda_allocation_failed")
            event("out of memory after admission (foreign growth)")

    @rule(pick=PICK)
    def allocation_fails_or_is_cancelled(self, pick: int) -> None:
        ids = self.pending_ids()
        if not ids:
            return
        rid = ids[pick % len(ids)]
        del self.live[rid]
        self.ledger.release(rid)
        self.ledger.release(rid)  # idempotent

    @rule(pick=PICK)
    def free_a_model(self, pick: int) -> None:
        ids = self.resident_ids()
        if not ids:
            return
        rid = ids[pick % len(ids)]
        self.ours_real -= self.live.pop(rid).nbytes
        self.ledger.release(rid)  # a no-op when a sample already showed it

    @rule(pick=PICK)
    def a_client_dies(self, pick: int) -> None:
        if not self.alive_pids:
            return
        pid = sorted(self.alive_pids)[pick % len(self.alive_pids)]
        self.alive_pids.discard(pid)
        for rid, ours in list(self.live.items()):
            if ours.pid == pid:
                if ours.resident:
                    self.ours_real -= ours.nbytes  # the driver frees a dead process's memory
                del self.live[rid]

    # --- foreign applications ---------------------------------------------------------------------

    @rule(fraction=st.floats(min_value=0.0, max_value=1.0))
    def foreign_allocates(self, fraction: float) -> None:
        room = self.total - self.foreign - self.ours_real  # a real GPU cannot give more than it has
        self.foreign += int(room * fraction)

    @rule(fraction=st.floats(min_value=0.0, max_value=1.0))
    def foreign_frees(self, fraction: float) -> None:
        self.foreign -= int(self.foreign * fraction)

    # --- invariants -------------------------------------------------------------------------------

    @invariant()
    def physical_truth(self) -> None:
        if not hasattr(self, "ledger"):
            return
        assert self.ours_real >= 0
        assert self.foreign >= 0
        assert self.ours_real + self.foreign <= self.total
        assert self.ours_real == sum(r.nbytes for r in self.live.values() if r.resident)

    @invariant()
    def never_believes_more_is_free_than_is(self) -> None:
        """I1."""
        if not hasattr(self, "ledger"):
            return
        available = self.ledger.available_bytes()
        assert available <= self.total - self.headroom - self.seen_foreign() - self.committed()

    @invariant()
    def within_headroom_while_foreign_usage_is_what_nvml_showed(self) -> None:
        """I3."""
        if not hasattr(self, "ledger") or not self.live:
            return
        latest = max(self.live.values(), key=lambda r: r.admitted_seq)
        if self.foreign <= self.history[latest.admitted_sample_at][0]:
            assert self.committed() + self.foreign <= self.total - self.headroom

    @invariant()
    def pending_reservations_are_all_counted(self) -> None:
        if not hasattr(self, "ledger"):
            return
        in_ledger = {r.id: r for r in self.ledger.reservations()}
        assert set(self.pending_ids()) <= set(in_ledger)
        last = self.ledger.last_sample_at()
        assert last is not None
        for rid in self.resident_ids():  # resident and still counted only until a later sample shows it
            if rid in in_ledger:
                allocated_at = in_ledger[rid].allocated_at
                assert allocated_at is not None and allocated_at >= last


LaggingGpu.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_the_ledger_never_over_commits = LaggingGpu.TestCase
