"""Checkpoints, exact resume after SIGKILL and SIGTERM, and the divergence guard, via the real CLI."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, read_events, run_cli
from experiments.checkpoints import load, load_weights
from experiments.models import build_model, materialize

# ~300 steps per epoch so that a signal lands mid-run; telemetry at every step to check the curves.
ARGS = ["model=tied", "init=xavier", "data.n_train=9600", "data.n_val=200", "trainer.epochs=4",
        "telemetry.loss.every=7", "telemetry.histograms.enabled=false"]
LOSS_STEPS = [1, *range(7, 1200, 7), 1200]  # the first step, every 7th, the last


def start(run_dir, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *ARGS, *extra, f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(path, proc, timeout=60):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    result = run_cli([*ARGS, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


@pytest.fixture(scope="module")
def reference_weights(reference):
    return torch.load(reference / "weights_final.pt", weights_only=True)["state_dict"]


def assert_same_weights(run_dir, reference):
    final = torch.load(run_dir / "weights_final.pt", weights_only=True)["state_dict"]
    assert final.keys() == reference.keys()
    for name in final:
        assert torch.equal(final[name], reference[name]), name  # bit for bit


def assert_each_step_once(run_dir, reference=None):
    """Every logged step once, and (with ``reference``, an uninterrupted run) the same values: the
    first loss/train point after the resume averages the same steps as the uninterrupted run's."""
    acc = read_events(run_dir)
    assert [e.step for e in acc.Scalars("loss/train")] == LOSS_STEPS
    assert [e.step for e in acc.Scalars("loss/val")] == [300, 600, 900, 1200]
    if reference is not None:
        expected = read_events(reference)
        for tag in ("loss/train", "loss/val", "loss/train_epoch"):
            assert [e.value for e in acc.Scalars(tag)] == [e.value for e in expected.Scalars(tag)], tag


def test_sigkill_then_resume_is_exact(tmp_path, reference, reference_weights):
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    wait_for(run_dir / "checkpoints" / "last.pt", proc)
    time.sleep(0.2)  # let it write some events past the checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "weights_final.pt").exists()
    result = run_cli([*ARGS, f"trainer.resume={run_dir}", f"hydra.run.dir={tmp_path / 'resume-invocation'}"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming from" in result.stdout + result.stderr
    assert_same_weights(run_dir, reference_weights)
    assert_each_step_once(run_dir, reference)
    numbered = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.pt"))
    assert numbered == [f"step_{s:08d}.pt" for s in (300, 600, 900, 1200)]


def test_sigterm_writes_checkpoint_and_resume_is_exact(tmp_path, reference, reference_weights):
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output and f"trainer.resume={run_dir}" in output
    state = load(run_dir / "checkpoints" / "last.pt")
    assert state["batch_in_epoch"] > 0  # a mid-epoch checkpoint
    assert "Resume with" in (run_dir / "failure.txt").read_text()
    result = run_cli([*ARGS, "trainer.resume=auto", f"hydra.run.dir={run_dir}"])  # auto: this folder's last.pt
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (run_dir / "failure.txt").exists()  # finished now: a sweep or report no longer counts it failed
    assert_same_weights(run_dir, reference_weights)
    assert_each_step_once(run_dir, reference)


def test_truncated_checkpoint_is_named(tmp_path, reference):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes((reference / "checkpoints" / "last.pt").read_bytes())
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    result = run_cli([*ARGS, f"trainer.resume={run_dir}", f"hydra.run.dir={tmp_path / 'again'}"])
    assert result.returncode != 0
    assert str(last) in result.stdout + result.stderr and "truncated or corrupted" in result.stdout + result.stderr


def test_divergence_stops_with_step_and_parameter(tmp_path, make_cfg):
    run_dir = tmp_path / "run"
    # A linear network (Identity activations) with too large a step grows until it overflows.
    result = run_cli(["model=tied", "model.activation=torch.nn.Identity", "init=xavier", "optim.lr=0.1",
                      "trainer.epochs=30", "data.n_train=64", f"hydra.run.dir={run_dir}"])
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "training diverged at step" in output and ("first parameter with a non-finite gradient" in output
                                                      or "when it was found, are finite" in output)
    step = int(output.split("diverged at step ")[1].split(":")[0])
    assert step > 2  # it ran a while, so there is a good checkpoint to keep
    state = load(run_dir / "checkpoints" / "last.pt")
    assert state["step"] < step
    model = build_model(make_cfg(["model=tied", "model.activation=torch.nn.Identity"]).model)
    materialize(model, torch.rand(2, 4))
    load_weights(model, run_dir / "checkpoints" / "last.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "diverged" in (run_dir / "failure.txt").read_text()
    assert read_events(run_dir).Scalars("loss/val")  # the events written so far were flushed
