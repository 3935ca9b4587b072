"""Progress lines within an epoch: spaced by wall time, read the clock only near a line, and in a real run."""

import logging
import re

import pytest

from experiments.config import compose_config
from experiments.progress import Progress
from experiments.training import train


class FakeClock:
    def __init__(self):
        self.now, self.reads = 0.0, 0

    def __call__(self):
        self.reads += 1
        return self.now


def run_epoch(total, seconds_per_step, interval, first_step=None, later=0):
    """Drive a Progress as the training loop does; return (lines, checks, clock reads)."""
    clock = FakeClock()
    progress = Progress(total, 0, interval, "1/3", later=later, clock=clock)
    checks = 0
    for done in range(1, total + 1):
        clock.now += first_step if (done == 1 and first_step is not None) else seconds_per_step
        if done >= progress.due:
            checks += 1
            progress.check(done)
    return checks, clock.reads


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "experiments.progress"]


def test_a_line_every_interval_with_rate_and_eta(caplog):
    """100 steps/s for 10,000 steps, a line every 10 s: nine lines (at 10 s, ..., 90 s), few clock reads."""
    caplog.set_level(logging.INFO)
    checks, reads = run_epoch(10_000, 0.01, 10.0, later=20_000)
    printed = lines(caplog)
    assert len(printed) == 9, printed
    first = re.fullmatch(r"step (\d+)/10000 of epoch 1/3 \((\d+)%\)  ([\d.]+) steps/s  ETA epoch (\S+), run (\S+)",
                         printed[0])
    assert first, printed[0]
    assert int(first.group(1)) == pytest.approx(1000, abs=5) and first.group(2) == "10"
    assert float(first.group(3)) == pytest.approx(100.0, rel=1e-3)
    assert (first.group(4), first.group(5)) == ("0:01:30", "0:04:50")  # 9,000 and 29,000 steps left at 100/s
    steps = [int(re.match(r"step (\d+)/", line).group(1)) for line in printed]
    assert steps == pytest.approx([1000 * k for k in range(1, 10)], abs=5)
    assert checks < 60 and reads == checks + 1  # the clock is read near the lines only, not on every step


def test_a_slow_first_step_does_not_flood_or_starve(caplog):
    caplog.set_level(logging.INFO)
    checks, _ = run_epoch(10_000, 0.01, 10.0, first_step=3.0)  # e.g. a cold start
    assert len(lines(caplog)) in (9, 10) and checks < 100


@pytest.mark.parametrize("total, interval", [(500, 10.0), (10_000, 0.0)])
def test_short_epochs_and_interval_zero_print_nothing(caplog, total, interval):
    caplog.set_level(logging.INFO)
    checks, _ = run_epoch(total, 0.01, interval)  # 5 s < 10 s; interval 0: off
    assert lines(caplog) == [] and (checks == 0 if interval == 0 else checks < 20)


def test_a_real_run_prints_progress_lines(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    train(compose_config(["data.n_train=20000", "trainer.epochs=1", "trainer.progress_every_s=0.02",
                          "telemetry=off"]), tmp_path)
    steps = [int(re.match(r"step (\d+)/625 of epoch 1/1 ", line).group(1)) for line in lines(caplog)]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] < 625
