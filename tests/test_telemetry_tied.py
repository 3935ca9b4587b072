"""The tied signal's statistics: plain arithmetic on known gradients; a gradient no use carried is a use of its own."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from experiments.config import telemetry_schema
from experiments.telemetry.monitor import Monitor
from experiments.telemetry.tied import use_statistics


def test_cos_and_cancellation_match_plain_arithmetic():
    param = nn.Parameter(torch.zeros(2, 2))
    a, b = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[-1.0, 0.5], [2.0, 0.0]])
    param.grad = a + b
    tags, values = use_statistics("w", param, {"2.w": a, "4.w": b})
    got = dict(zip(tags, [v.item() for v in values]))
    s = (a + b).flatten()
    for alias, g in (("2.w", a), ("4.w", b)):
        g = g.flatten()
        assert got[f"tied/w/use/{alias}/grad_norm"] == pytest.approx(g.norm().item())
        assert got[f"tied/w/use/{alias}/cos"] == pytest.approx((g @ s / (g.norm() * s.norm())).item())
    assert got["tied/w/cancellation"] == pytest.approx((s.norm() / (a.norm() + b.norm())).item())
    _, values = use_statistics("w", param, {"2.w": a, "4.w": -a})  # cancelling uses
    assert values[-1].item() == pytest.approx(0.0)


def test_a_gradient_no_use_carried_is_logged_as_the_unattributed_use_with_a_warning(tmp_path, caplog):
    """A hook that edits .grad after the uses were seen: the difference is its own use, never a silent gap."""
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(3, 4), shared, nn.ReLU(), shared, nn.Linear(4, 1))
    cfg = OmegaConf.structured(telemetry_schema())
    cfg.tied.every = 1
    monitor = Monitor(tmp_path, model, cfg)
    monitor.before_forward(1)
    loss = model(torch.randn(5, 3)).pow(2).mean()
    loss.backward()
    extra = torch.full_like(shared.weight, 0.1)
    shared.weight.grad += extra
    monitor.after_backward(1)
    written = monitor.after_step(1, loss.item())
    monitor.close()
    uses = monitor.signals["tied"].last["1.weight"]
    assert list(uses) == ["1.weight", "3.weight", "unattributed"]
    torch.testing.assert_close(uses["unattributed"], extra)
    assert written["tied/1.weight/use/unattributed/grad_norm"] == pytest.approx(extra.norm().item(), rel=1e-5)
    assert "'1.weight'" in caplog.text and "could not be attributed" in caplog.text


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
