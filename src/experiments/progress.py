"""Progress lines within a long epoch: step/steps, rate and ETA, about every ``trainer.progress_every_s``.

    step 1200/5000 of epoch 2/10 (24%)  85.3 steps/s  ETA epoch 0:00:44, run 0:08:10

The loop pays one integer comparison per step (``if done >= progress.due``). The clock is read
only when that comparison says a line may be due, and ``due`` is placed from the measured rate so
that a line comes about every ``interval`` seconds; an epoch shorter than that prints nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import timedelta
from typing import Callable

log = logging.getLogger(__name__)

NEVER = sys.maxsize


class Progress:
    """One epoch's progress: ``total`` steps, ``done`` of them already (a resumed epoch),
    ``later`` steps in the epochs after it (for the run's ETA)."""

    def __init__(self, total: int, done: int, interval: float, epoch: str, later: int = 0,
                 clock: Callable[[], float] = time.perf_counter):
        self.total, self.interval, self.epoch, self.later, self.clock = total, interval, epoch, later, clock
        self.first, self.started = done, clock()
        self.printed = self.started
        self.due = done + 1 if interval > 0 else NEVER  # the step count at which to look at the clock

    def check(self, done: int) -> None:
        """Called when ``done >= self.due``: print a line if ``interval`` has passed; place the next look."""
        now = self.clock()
        rate = (done - self.first) / max(now - self.started, 1e-9)
        if now - self.printed >= self.interval and done < self.total:
            self.printed = now
            left = self.total - done
            log.info("step %d/%d of epoch %s (%d%%)  %.1f steps/s  ETA epoch %s, run %s", done, self.total,
                     self.epoch, 100 * done // self.total, rate, _duration(left / rate),
                     _duration((left + self.later) / rate))
        self.due = done + max(1, int(rate * (self.printed + self.interval - now)))


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))
