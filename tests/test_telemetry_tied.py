"""The tied signal's statistics: plain arithmetic on known gradients; a tampered use fails loudly."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from experiments.config import telemetry_schema
from experiments.errors import TieGradientMismatch
from experiments.telemetry.monitor import Monitor
from experiments.telemetry.tied import use_statistics


def test_cos_and_cancellation_match_plain_arithmetic():
    param = nn.Parameter(torch.zeros(2, 2))
    a, b = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[-1.0, 0.5], [2.0, 0.0]])
    param.grad = a + b
    tags, values, (error, tolerance) = use_statistics("w", param, {"2.w": a, "4.w": b})
    got = dict(zip(tags, [v.item() for v in values]))
    s = (a + b).flatten()
    for alias, g in (("2.w", a), ("4.w", b)):
        g = g.flatten()
        assert got[f"tied/w/use/{alias}/grad_norm"] == pytest.approx(g.norm().item())
        assert got[f"tied/w/use/{alias}/cos"] == pytest.approx((g @ s / (g.norm() * s.norm())).item())
    assert got["tied/w/cancellation"] == pytest.approx((s.norm() / (a.norm() + b.norm())).item())
    assert error.item() <= tolerance.item()
    _, values, _ = use_statistics("w", param, {"2.w": a, "4.w": -a})  # cancelling uses
    assert values[-1].item() == pytest.approx(0.0)


def test_tampered_use_gradient_fails_loudly(make_cfg, tmp_path):
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(3, 4), shared, nn.ReLU(), shared, nn.Linear(4, 1))
    cfg = OmegaConf.structured(telemetry_schema())
    cfg.tied.every = 1
    monitor = Monitor(tmp_path, model, cfg)
    monitor.before_forward(1)
    loss = model(torch.randn(5, 3)).pow(2).mean()
    loss.backward()
    uses = monitor.signals["tied"].uses
    uses.grads["1.weight"]["3.weight"] = uses.grads["1.weight"]["3.weight"] + 0.1
    monitor.after_backward(1)
    with pytest.raises(TieGradientMismatch, match="'1.weight' \\(1.weight, 3.weight\\)"):
        monitor.after_step(1, loss.item())
    monitor.close()


def test_undefined_statistics_are_nan_in_the_event_file_and_the_run_goes_on(tmp_path):
    """The rnn's first time step multiplies the hidden state 0, so its weight_hh use has an exactly zero gradient:
    its cosine is NaN on disk (not 0); init=recurrent zeroes the biases, so their step-1 update ratio is NaN (not
    ~1e29). Neither is a divergence: the run finishes, exit 0, no failure.txt."""
    import math

    from conftest import read_events, run_cli

    run_dir = tmp_path / "run"
    result = run_cli(["model=rnn", "data=zipf_text", "data.vocab=30", "data.n_train=96", "data.n_val=32",
                      "data.batch_size=32", "init=recurrent", "trainer.epochs=1", "telemetry.tied.every=1",
                      "telemetry.update_ratio.every=1", f"hydra.run.dir={run_dir}"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert not (run_dir / "failure.txt").exists()
    acc = read_events(run_dir)
    use = "tied/1.t0.weight_hh/use/1.t0.weight_hh"
    assert [e.step for e in acc.Scalars(f"{use}/cos")] == [1, 2, 3]
    assert all(math.isnan(e.value) for e in acc.Scalars(f"{use}/cos"))
    assert all(e.value == 0 for e in acc.Scalars(f"{use}/grad_norm"))
    later = acc.Scalars("tied/1.t0.weight_hh/use/1.t7.weight_hh/cos")  # a use with a gradient: a real cosine
    assert all(-1 <= e.value <= 1 for e in later)
    bias, weight = acc.Scalars("update_ratio/1.t0.bias_ih"), acc.Scalars("update_ratio/1.t0.weight_ih")
    assert math.isnan(bias[0].value) and 0 < bias[1].value < 10 and 0 < weight[0].value < 1
