"""TensorBoard at a glance with a day's runs, checked in a real browser (headless Chromium).

A day: the three experiment presets (small) and a 4-job sweep, 16 jobs. Opening the log directory
the end-of-run line prints must show charts with lines on first load in Scalars, Time Series and
Custom Scalars; the per-use view the line names second must draw each use of the bptt sweep in its
own colour, its runs named by label (sum, t-0 ... t-7). Lines are found in the screenshot's pixels:
the colours of TensorBoard's run palettes in the chart area (the sidebar, where the run checkboxes
have those colours too, is cut off). A control with 41 runs shows the detector sees an empty page.

Slow (a day of small runs, three TensorBoards, about ten page loads); needs ``chromium``
(``apt-get install -y chromium``), else skipped.
"""

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import run_cli
from experiments.telemetry import tags
from experiments.telemetry.events import EventFile

pytestmark = pytest.mark.slow
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
if CHROMIUM is None:
    pytest.skip("no chromium on this machine (apt-get install -y chromium)", allow_module_level=True)

# TensorBoard 2.21's run colours: the legacy dashboards' palette (tf_color_scale/palettes.ts,
# tensorboardColorBlindAssist, its grey left out) and Time Series' (webapp/util/colors.ts, its slate left out)
LEGACY = ["#ff7043", "#0077bb", "#cc3311", "#33bbee", "#ee3377", "#009988"]
TIME_SERIES = ["#12b5cb", "#e52592", "#f9ab00", "#9334e6", "#7cb342", "#e8710a"]
SMALL = ["trainer.epochs=1", "data.n_train=600", "data.n_val=200"]
DAY = [["-m", "experiment=weight_tying", *SMALL], ["-m", "experiment=bptt", *SMALL],
       ["-m", "experiment=shared_depth", "trainer.epochs=1"], ["-m", "init=normal,xavier", "model=mlp,tied"]]


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """The day's runs in a fresh folder; every end-of-run line printed."""
    cwd = tmp_path_factory.mktemp("day")
    lines = []
    for args in DAY:
        result = run_cli(args, cwd=cwd, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        lines += re.findall(r"see it with: (.*)", result.stdout + result.stderr)
    return cwd, lines


class TensorBoard:
    """``tensorboard --logdir <logdir>`` on a free port, until the context ends."""

    def __init__(self, logdir: Path, runs: int):
        self.logdir, self.runs = logdir, runs

    def __enter__(self):
        log = self.logdir.parent / f"{self.logdir.name}.tensorboard.log"
        with open(log, "w") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(self.logdir),
                                             "--host", "127.0.0.1", "--port", "0"], stdout=out, stderr=out)
        deadline = time.monotonic() + 120
        while not (found := re.search(r"(http://127\.0\.0\.1:\d+/)", log.read_text())):  # "TensorBoard 2.21.0 at"
            assert self.process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        self.url = found.group(1)
        while time.monotonic() < deadline:  # every run listed and its scalars loaded
            tags_by_run = json.load(urllib.request.urlopen(self.url + "data/plugin/scalars/tags"))
            if len(tags_by_run) == self.runs and all(tags_by_run.values()):
                return self
            time.sleep(1)
        raise AssertionError(f"tensorboard listed {len(tags_by_run)} runs with scalars, not {self.runs}")

    def get(self, path: str):
        return json.load(urllib.request.urlopen(self.url + path))

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(timeout=30)


def screenshot(url: str, path: Path) -> Path:
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--no-first-run", "--virtual-time-budget=15000", "--window-size=1600,1200",
                    f"--screenshot={path}", url], capture_output=True, timeout=240)
    assert path.is_file(), f"chromium wrote no screenshot of {url}"
    return path


def line_colours(png: Path, palette, tolerance: int = 6, enough: int = 50) -> int:
    """How many of ``palette``'s colours draw at least ``enough`` pixels in the chart area (right of
    the run selector, below the header, left of Time Series' settings pane)."""
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    height, width, _ = image.shape
    area = image[130:, int(0.25 * width):int(0.83 * width)]
    found = 0
    for colour in palette:
        target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
        found += int((np.abs(area - target) <= tolerance).all(axis=-1).sum() >= enough)
    return found


# Headless Chromium without a GPU draws no WebGL: Time Series is asked for its SVG charts.
TABS = {"scalars": ("#scalars", LEGACY), "time series": ("?forceSVG=true#timeseries", TIME_SERIES),
        "custom scalars": ("#custom_scalars", LEGACY)}


def test_a_days_log_directory_opens_with_lines_in_every_tab(day, tmp_path):
    cwd, lines = day
    assert len(lines) == 16
    logdirs = {re.match(r"tensorboard --logdir (\S+)", line).group(1) for line in lines}
    assert len(logdirs) == 1, logdirs  # every job of the day names the same log directory
    with TensorBoard(cwd / logdirs.pop(), runs=16) as board:
        assert len(board.get("data/runs")) == 16  # one run per job, under the 40 the legacy tabs select
        for tab, (fragment, palette) in TABS.items():
            png = screenshot(board.url + fragment, tmp_path / f"{tab}.png")
            assert line_colours(png, palette) >= 3, f"{tab}: no lines on first load ({png})"


def test_the_per_use_view_draws_each_time_step_in_its_own_colour(day, tmp_path):
    cwd, lines = day
    bptt = {re.search(r"each use in its own colour: python (\S+ \S+)", line).group(1)
            for line in lines if "(this run: " in line and "init.gain=" in line}
    assert len(bptt) == 1, bptt  # the sweep's jobs name one view: the sweep's
    command = re.fullmatch(r"(\S+) (\S+)", bptt.pop())
    view = tmp_path / "view"
    result = run_cli([command.group(2), "--out", str(view)], cwd=cwd, script=command.group(1))
    assert result.returncode == 0, result.stderr
    with TensorBoard(view, runs=9) as board:
        assert board.get("data/runs") == ["sum", *(f"t-{k}" for k in range(8))]  # labels, in colour order
        png = screenshot(board.url + "#custom_scalars", tmp_path / "uses.png")
        assert line_colours(png, LEGACY) == len(LEGACY), f"not every colour drawn ({png})"


def test_the_detector_sees_an_empty_page(tmp_path):
    """41 runs: TensorBoard's Scalars tab opens with no run selected (tf-multi-checkbox.ts, 40)."""
    for i in range(41):
        events = EventFile(tmp_path / "runs" / f"run{i:02d}")
        for step in range(1, 30):
            events.write_scalars(step, [tags.LOSS_TRAIN], [1.0 / step + 0.01 * i])
        events.close()
    with TensorBoard(tmp_path / "runs", runs=41) as board:
        png = screenshot(board.url + "#scalars", tmp_path / "empty.png")
        assert line_colours(png, LEGACY) == 0, png
