"""Checkpoints, exact resume after SIGKILL and SIGTERM (of a run and of a sweep), honest resume
(a changed setting refused, or allowed and used), and the divergence guard."""

import os
import runpy
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, read_events, run_cli
from experiments.checkpoints import load, load_weights
from experiments.config import compose_config
from experiments.errors import CheckpointError, ConfigError
from experiments.models import build_model, materialize
from experiments.training import train

# ~300 steps per epoch so that a signal lands mid-run; telemetry at every step to check the curves. Every
# cadence is explicit (what `every: null` gives 1200 steps), so a run given more epochs logs the same steps.
ARGS = ["model=tied", "init=xavier", "data.n_train=9600", "data.n_val=200", "trainer.epochs=4",
        "telemetry.loss.every=7", "telemetry.histograms.enabled=false", "telemetry.param_norm.every=24",
        "telemetry.grad_norm.every=24", "telemetry.tied.every=24", "telemetry.update_ratio.every=48",
        "telemetry.activations.every=48"]
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
    """SIGKILL mid-run, after events past a checkpoint reached the disk; resuming from that checkpoint ends
    bit-identical to an uninterrupted run, each step logged once (what the killed run wrote after the
    checkpoint purged). The killed run is given 1000 epochs (trainer.epochs may change on a resume), so
    however fast the machine it is still running when killed; it is killed once its second checkpoint
    has flushed what it logged after the first."""
    run_dir = tmp_path / "run"
    proc = start(run_dir, "trainer.epochs=1000")
    wait_for(run_dir / "checkpoints" / "step_00000600.pt", proc)  # steps 301..600 are on disk
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "weights_final.pt").exists()
    first = run_dir / "checkpoints" / "step_00000300.pt"
    started = time.time()
    result = run_cli([*ARGS, f"trainer.resume={first}", f"hydra.run.dir={tmp_path / 'resume-invocation'}"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming from {first} at step 300" in result.stdout + result.stderr
    assert_same_weights(run_dir, reference_weights)
    assert_each_step_once(run_dir, reference)
    for step in (600, 900, 1200):  # rewritten by the resumed run, as the uninterrupted run wrote them
        path = run_dir / "checkpoints" / f"step_{step:08d}.pt"
        assert path.stat().st_mtime >= started
        expected = load(reference / "checkpoints" / path.name)["state_dict"]
        assert all(torch.equal(load(path)["state_dict"][k], v) for k, v in expected.items()), path.name


def test_sigterm_writes_checkpoint_and_resume_is_exact(tmp_path, reference, reference_weights):
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output
    state = load(run_dir / "checkpoints" / "last.pt")
    assert state["batch_in_epoch"] > 0  # a mid-epoch checkpoint
    assert "Resume with" in (run_dir / "failure.txt").read_text()
    command = printed_command(output)  # hydra.run.dir=<this folder> trainer.resume=auto, shell-quoted
    assert command[-2:] == [f"hydra.run.dir={run_dir}", "trainer.resume=auto"]
    result = run_cli(command, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (run_dir / "failure.txt").exists()  # finished now: a sweep or report no longer counts it failed
    assert_same_weights(run_dir, reference_weights)
    assert_each_step_once(run_dir, reference)


def printed_command(output: str) -> list:
    """The arguments of the printed resume command, split as a shell splits them."""
    words = shlex.split(output.split("Resume with: ")[1].splitlines()[0])
    assert words[:2] == ["python", "train.py"], words
    return words[2:]


def test_first_epoch_kill_then_resume_auto_has_each_step_once(tmp_path, caplog):
    """Killed before its first checkpoint: resume=auto starts over, and the old events are gone."""
    args = [a for a in ARGS if not a.startswith(("data.n_train", "trainer.epochs"))]
    args += ["data.n_train=19200", "trainer.epochs=1"]  # 600 steps, no checkpoint before the end
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not [p for p in run_dir.glob("events.out.tfevents.*") if p.stat().st_size > 20_000]:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "checkpoints").exists(), "the kill came too late for this test"
    assert read_events(run_dir).Scalars("loss/train")  # steps were written, and would appear twice
    with caplog.at_level("WARNING", logger="experiments.run_folder"):
        train(compose_config([*args, "trainer.resume=auto"]), run_dir)  # what the same command line runs
    output = caplog.text
    assert "taking over the stale lock" in output and "event file(s) of the earlier attempt were removed" in output
    reference = tmp_path / "reference"
    train(compose_config(args), reference)
    assert_same_weights(run_dir, torch.load(reference / "weights_final.pt", weights_only=True)["state_dict"])
    points = lambda folder: [(e.step, e.value) for e in read_events(folder).Scalars("loss/train")]  # noqa: E731
    assert points(run_dir) == points(reference) and len(points(run_dir)) > 80  # each step once
    assert len(read_events(run_dir).Tensors("config/text_summary")) == 1


SWEEP = ["init=normal,xavier", "model=tied", "data.n_train=9600", "data.n_val=200", "trainer.epochs=3",
         "telemetry.loss.every=7", "telemetry.histograms.enabled=false"]


@pytest.mark.slow  # (over 8 s: the default suite stays under 5 minutes; .ci/run runs it)
def test_sigterm_stops_a_sweep_and_its_printed_command_resumes_each_job_from_its_own_checkpoint(tmp_path, capsys):
    """SIGTERM in the first job: the printed command (shell-quoted, a space in the sweep folder) continues
    that job from its own checkpoint and runs the job that never started; both end bit-identical to
    uninterrupted runs, with each step once and the same loss/train values (every 7 steps: the first
    point after the resume averages the same steps)."""
    sweep = tmp_path / "my sweep"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "-m", *SWEEP, f"hydra.sweep.dir={sweep}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not list(sweep.glob("*init=normal*/checkpoints/last.pt")):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.01)
    (first,) = sweep.glob("*init=normal*")
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert load(first / "checkpoints" / "last.pt")["batch_in_epoch"] > 0  # stopped mid-epoch
    second = first.with_name(first.name.replace("init=normal", "init=xavier"))
    assert not second.exists()  # never started

    report = runpy.run_path(str(ROOT / "scripts" / "report.py"))["main"]  # the report of the killed sweep
    assert report([str(sweep), "--no-figures"]) == 1
    assert f"1 job(s) of the sweep never started (it was stopped): {second.name}" in capsys.readouterr().out

    command = printed_command(output)
    assert command[0] == "-m" and f'hydra.sweep.dir="{sweep}"' in command and command[-1] == "trainer.resume=auto"
    result = run_cli(command, cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming from {first / 'checkpoints' / 'last.pt'}" in result.stdout + result.stderr

    for job, init in ((first, "normal"), (second, "xavier")):
        reference = tmp_path / f"reference-{init}"
        train(compose_config([o.replace("init=normal,xavier", f"init={init}") for o in SWEEP]), reference)
        assert_same_weights(job, torch.load(reference / "weights_final.pt", weights_only=True)["state_dict"])
        resumed, uninterrupted = read_events(job).Scalars("loss/train"), read_events(reference).Scalars("loss/train")
        assert [(e.step, e.value) for e in resumed] == [(e.step, e.value) for e in uninterrupted]


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
    assert f"The last checkpoint, {run_dir / 'checkpoints' / 'last.pt'} (step {state['step']}), holds the last good " \
           "state." in output
    model = build_model(make_cfg(["model=tied", "model.activation=torch.nn.Identity"]).model)
    materialize(model, torch.rand(2, 4))
    load_weights(model, run_dir / "checkpoints" / "last.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "diverged" in (run_dir / "failure.txt").read_text()
    assert read_events(run_dir).Scalars("loss/val")  # the events written so far were flushed


QUICK = ["model=tied", "init=xavier", "data.n_train=320", "data.n_val=64", "telemetry.histograms.enabled=false"]


def test_a_changed_setting_is_refused_then_allowed_and_really_used(tmp_path, caplog):
    run_dir = tmp_path / "run"
    train(compose_config([*QUICK, "trainer.epochs=1"]), run_dir)
    again = [*QUICK, "trainer.epochs=2", "trainer.resume=auto"]  # more epochs: free to change
    with pytest.raises(ConfigError) as refused:
        train(compose_config([*again, "optim.lr=0.01", "trainer.seed=3", "data.n_train=640", "init=normal"]), run_dir)
    message = str(refused.value)
    for change in ("optim.lr: 0.03 in the checkpoint, 0.01 now", "trainer.seed: 0 in the checkpoint, 3 now",
                   "data.n_train: 320 in the checkpoint, 640 now", "init.name: 'xavier' in the checkpoint, 'normal' now"):
        assert change in message, message
    assert "trainer.epochs:" not in message and "trainer.resume_changes=allow" in message
    assert load(run_dir / "checkpoints" / "last.pt")["step"] == 10  # nothing trained, nothing written

    with caplog.at_level("WARNING"):
        train(compose_config([*again, "optim.lr=0.01", "trainer.resume_changes=allow"]), run_dir)
    assert "- optim.lr: 0.03 in the checkpoint, 0.01 now: used from here on" in caplog.text
    state = load(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 20 and state["optimizer"]["param_groups"][0]["lr"] == 0.01  # what step() used
    assert "optim:\n  _target_: torch.optim.SGD\n  _partial_: true\n  lr: 0.01" in state["config"]
    assert read_events(run_dir).Tensors("resume_changes/text_summary")  # TensorBoard's text tab says so too
    # the same resume with the old lr: different weights, so the new lr changed the training
    same = tmp_path / "same"
    train(compose_config([*QUICK, "trainer.epochs=1"]), same)
    train(compose_config(again), same)
    assert not torch.equal(load(same / "weights_final.pt")["state_dict"]["0.weight"],
                           load(run_dir / "weights_final.pt")["state_dict"]["0.weight"])


def test_another_model_allowed_is_still_named_when_the_weights_do_not_fit(tmp_path):
    run_dir = tmp_path / "run"
    train(compose_config([*QUICK, "trainer.epochs=1"]), run_dir)
    with pytest.raises(CheckpointError, match="does not fit this model: .*model.\\* settings"):
        train(compose_config([*QUICK, "model=mlp", "trainer.epochs=2", "trainer.resume=auto",
                              "trainer.resume_changes=allow"]), run_dir)


def test_an_enormous_update_on_a_histogram_step_is_a_divergence(tmp_path):
    """optim.lr=1e38: weights of 1e38 after step 1 (logged as histograms at step 1), inf at step 2."""
    from experiments.failures import run_and_report

    with pytest.raises(SystemExit):
        run_and_report(train, compose_config(["optim.lr=1e38", "trainer.epochs=1"]), tmp_path, {}, multirun=False)
    reason = (tmp_path / "failure.txt").read_text()
    assert reason.startswith("Diverged: training diverged at step 2: the loss or a gradient is not finite")
    assert "No checkpoint was written yet" in reason and "intact" not in reason
