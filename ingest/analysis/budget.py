"""A share of a live worker's time for work that can wait: descriptors (names) and sweeps.

Live workers run many sessions' frames in turn; work that comes in bursts (20 sessions starting
or cutting to a new scene together each want a 50 ms sweep; new faces each want a descriptor)
would delay everyone's landmarks. A ``TimeBudget`` lets such work run while the worker has time
for it and makes the rest wait: the tracker then does a cheaper thing now and the full thing on
a later frame. Batch jobs have no budget: they do everything on time.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TimeBudget:
    """A token bucket of CPU seconds filled at ``share`` of wall time, holding at most
    ``burst_s``. Work may start while the bucket is not empty and pays for what it took, so the
    bucket can go below zero (the next work then waits longer)."""

    def __init__(self, share: float, burst_s: float = 0.5) -> None:
        self.share = share
        self.burst_s = burst_s
        self._tokens = burst_s
        self._last = time.monotonic()

    def available(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst_s, self._tokens + (now - self._last) * self.share)
        self._last = now
        return self._tokens > 0

    def spend(self, seconds: float) -> None:
        self._tokens -= seconds


class SweepBudget:
    """When a live worker does a sweep that is due: at once if nothing else waits for the worker
    (putting it off would help nobody: one session catching up sweeps on time), else while its
    ``TimeBudget`` holds time; never with share 0 (live sweeps off: the fill after stop gives
    every frame its final result). Only sweeps that others waited for are charged."""

    def __init__(self, share: float, burst_s: float, waiting: Callable[[], bool]) -> None:
        self.budget = TimeBudget(share, burst_s)
        self.waiting = waiting  # whether other work waits for the worker (its pipe holds requests)
        self._charged = False

    def available(self) -> bool:
        if self.budget.share <= 0:
            return False
        self._charged = self.waiting()
        return not self._charged or self.budget.available()

    def spend(self, seconds: float) -> None:
        if self._charged:
            self.budget.spend(seconds)
