"""The divergence guard: a non-finite step never reaches the weights, and a quiet step (nothing
logged, nothing checked) reads nothing back to the host."""

import re

import pytest
import torch

from experiments.config import compose_config
from experiments.errors import Diverged
from experiments.training import Run

HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    """Count every call of the tensor methods that copy a value to the host (on a GPU, a sync)."""
    calls = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def steps_of(run, n):
    """Run ``n`` optimizer steps of ``run`` outside its epoch loop (as train_epoch does)."""
    batches = run.data.batches(run.shuffle)
    for _ in range(n):
        x, y = next(batches)
        run.step += 1
        yield run.step, x, y


def config(*extra):
    return compose_config(["model=tied", "data.n_train=640", "trainer.epochs=1", "trainer.check_every=10",
                           "telemetry.loss.every=4", "telemetry.param_norm.every=5", "telemetry.grad_norm.every=5",
                           "telemetry.tied.every=5", "telemetry.activations.every=5", "telemetry.update_ratio.every=5",
                           "telemetry.histograms.every=5", *extra])


@pytest.mark.parametrize("model", ["tied", "tied_lm_free"])
def test_quiet_steps_read_nothing_back(tmp_path, host_reads, model):
    """Steps on which no signal is due and no check falls make no host read at all; the others may."""
    cfg = config() if model == "tied" else config("+model.grad_scale={4.weight:2.0}")  # the intervention too
    run = Run(cfg, tmp_path)
    per_step = {}
    for step, x, y in steps_of(run, 20):
        before = len(host_reads)
        run.train_step(x, y)
        per_step[step] = host_reads[before:]
    run.monitor.close()
    loud = {1} | {s for s in per_step if s % 4 == 0 or s % 5 == 0 or s % 10 == 0}
    quiet = [s for s in per_step if s not in loud]
    assert quiet == [2, 3, 6, 7, 9, 11, 13, 14, 17, 18, 19]
    assert {s: per_step[s] for s in quiet} == {s: [] for s in quiet}
    assert all(per_step[s] for s in (1, 4, 5, 10))  # logging steps do read (their one transfer)


@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_step_never_reaches_the_weights(tmp_path, fused):
    """A forward hook turns step 7's output into NaN. The run stops at the next check (step 8, a
    logging step) naming step 7, and the weights are bit for bit those after step 6."""
    extra = [] if fused else ["optim.fused=false"]
    reference = Run(config(*extra), tmp_path / "reference")
    for step, x, y in steps_of(reference, 6):
        reference.train_step(x, y)
    reference.monitor.close()

    run = Run(config(*extra), tmp_path / "run")
    assert run.guard.on_device is fused and bool(run.optimizer.defaults.get("fused")) is fused
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 7 else output

    run.model[0].register_forward_hook(poison)
    with pytest.raises(Diverged, match="training diverged at step 7: ") as failure:
        for step, x, y in steps_of(run, 12):
            run.train_step(x, y)
    assert run.step == (8 if fused else 7)  # on the device: found at the next check; on the host: at once
    message = str(failure.value)
    if fused:  # found at step 8, whose gradients are finite again
        assert "the gradients of step 8, when it was found, are finite" in message
    else:
        assert "first parameter with a non-finite gradient at step 7: 0.weight" in message
    run.monitor.close()
    for (name, p), q in zip(run.model.named_parameters(), reference.model.parameters()):
        assert torch.equal(p, q), name
    if fused:  # the optimizer's own state did not move either (Adam's step counter is put back by torch)
        assert all(torch.equal(run.optimizer.state[p]["momentum_buffer"], reference.optimizer.state[q]["momentum_buffer"])
                   for p, q in zip(run.model.parameters(), reference.model.parameters())
                   if "momentum_buffer" in run.optimizer.state[p] and run.optimizer.state[p]["momentum_buffer"] is not None)


def test_a_run_whose_values_leave_float32_is_reported_as_diverged(tmp_path):
    """The tied LM at lr 0.5: after epoch 1 loss/val is ~150 nats, so ppl/val (e^150) is beyond float32.
    Through the CLI: one paragraph naming the metric, failure.txt, exit 1, no traceback; what was logged
    before reads back (values beyond float32 are inf there, never an OverflowError)."""
    from conftest import read_events, run_cli

    run_dir = tmp_path / "run"
    result = run_cli(["model=tied_lm", "data=zipf_text", "data.n_train=256", "data.n_val=64", "data.vocab=50",
                      "trainer.epochs=3", "optim.lr=0.5", f"hydra.run.dir={run_dir}"], timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and "OverflowError" not in output, output
    reason = (run_dir / "failure.txt").read_text()
    assert reason.startswith("Diverged: training diverged by step 4: ppl/val is "), reason
    assert "beyond float32's range" in reason and "loss/val 1" in reason and "Lower optim.lr" in reason
    assert reason.count("\n") == 1 and reason in output
    assert not (run_dir / "weights_final.pt").exists()
    assert [e.step for e in read_events(run_dir).Scalars("loss/train")] == [1, 2, 3, 4]


def test_epoch_metrics_are_checked_as_float32():
    from experiments.guards import check_validation

    check_validation(3, {"loss/val": 88.0, "ppl/val": 1.6e38}, [], [])  # within float32: fine
    for metrics, named in [({"loss/val": float("nan")}, "loss/val is nan"),
                           ({"loss/val": 89.0, "ppl/val": 4.5e38}, "ppl/val is 4.5e+38, beyond float32's range"),
                           ({"loss/val": -1e39}, "loss/val is -1e+39, beyond")]:
        with pytest.raises(Diverged, match=re.escape(f"diverged by step 3: {named}")):
            check_validation(3, metrics, [], [])
