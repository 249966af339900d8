"""slot.TrackWorker: the per-face background runs of the enhancer and the face parser.

Each test holds the work itself (a Gate) instead of waiting for time to pass."""

from __future__ import annotations

import threading

from tests_support import HANG_GUARD_S, Gate

from mirage_desktop.vision.slot import TrackWorker


class _Harness:
    def __init__(self, work=None):
        self.lock = threading.RLock()
        self.stored: list[tuple] = []
        self.superseded = 0
        self.worker = TrackWorker("mirage-test-worker", self.lock, work or (lambda p: p * 10), self._store,
                                  self._superseded)

    def _store(self, tid, result, index):
        self.stored.append((tid, result, index))

    def _superseded(self):
        self.superseded += 1

    def ask(self, *items, index=0):
        """Queue (tid, payload) items the way a stage does: claimed in ``inflight`` first."""
        with self.lock:
            for tid, _ in items:
                self.worker.inflight.add(tid)
            gen = self.worker.generation
        self.worker.submit([(tid, p, index, gen) for tid, p in items])

    def wait(self):
        assert self.worker.finished.wait(HANG_GUARD_S)
        self.worker.finished.clear()


def test_results_are_stored_and_an_unread_handoff_is_superseded():
    gate = Gate()
    h = _Harness(lambda p: (gate.enter() if p == 1 else None, p * 10)[1])
    try:
        h.ask((1, 1), index=0)
        gate.wait_reached()  # the thread is busy with face 1
        h.ask((2, 2), index=1)
        h.ask((3, 3), index=2)  # replaces the unread list of face 2
        assert h.superseded == 1 and 2 not in h.worker.inflight and 3 in h.worker.inflight
        gate.open()
        h.wait()
        if (3, 30, 2) not in h.stored:
            h.wait()
        assert h.stored == [(1, 10, 0), (3, 30, 2)] and not h.worker.inflight
    finally:
        gate.open()
        h.worker.close()


def test_a_result_made_before_an_invalidate_is_dropped():
    gate = Gate()
    h = _Harness(lambda p: (gate.enter(), p)[1])
    try:
        h.ask((1, 5))
        gate.wait_reached()
        with h.lock:
            h.worker.invalidate()  # a reset while the model runs
        gate.open()
        h.wait()
        assert h.stored == [] and not h.worker.inflight
    finally:
        h.worker.close()


def test_a_failing_run_releases_its_face_and_the_thread_goes_on():
    def work(p):
        if p == "bad":
            raise RuntimeError("a bug")
        return p

    h = _Harness(work)
    try:
        h.ask((1, "bad"), (2, "good"))
        h.wait()
        assert h.stored == [(2, "good", 0)] and not h.worker.inflight
        h.ask((1, "again"))
        h.wait()
        assert h.stored[-1] == (1, "again", 0)
    finally:
        h.worker.close()


def test_close_lets_the_next_submit_restart_and_retire_does_not():
    h = _Harness()
    h.ask((1, 1))
    h.wait()
    h.worker.close()
    assert not h.worker.running
    h.ask((2, 2))
    h.wait()
    assert h.stored[-1] == (2, 20, 0)
    h.worker.retire()
    h.ask((3, 3))
    assert not h.worker.running and 3 not in h.worker.inflight  # nothing left waiting for an answer
