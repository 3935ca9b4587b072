"""Shared fixtures: configs composed with Hydra's compose API, exactly as train.py composes them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

# One torch thread: the suite's models are tiny, and torch's threads spinning on 2 shared cores
# (the CLI tests run several processes at once) make a step thousands of times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402  (after the thread setting)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from experiments.config import CONF_DIR, compose_config, register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
assert CONF_DIR == CONF, f"experiments is imported from {CONF_DIR.parent}, not this checkout"

register_configs()


@pytest.fixture
def make_cfg():
    return compose_config


def run_cli(args: List[str], cwd: Path = ROOT, timeout: float = 120, script: str = "train.py",
            **kwargs) -> subprocess.CompletedProcess:
    """Run a script of this project the way a user does, in a fresh Python process."""
    # This checkout's src/ first, whatever an editable install elsewhere points at.
    pythonpath = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", "PYTHONPATH": pythonpath}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def read_events(run_dir: Path):
    """All of a run's TensorBoard data, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(autouse=True)
def no_module_hooks_left_behind():
    """The lens puts global module hooks in only while it watches a step: a test that leaves one behind
    (a lens or monitor not closed, a step that never ended) fails, and the hooks are taken out."""
    from torch.nn.modules import module as nn_module

    yield
    left = len(nn_module._global_forward_hooks) + len(nn_module._global_forward_pre_hooks)
    nn_module._global_forward_hooks.clear()
    nn_module._global_forward_pre_hooks.clear()
    assert left == 0, f"{left} global module hook(s) left behind"
