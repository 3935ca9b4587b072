"""Per-use gradients of tied parameters, checked against untied copies computed by the test."""

import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from experiments.config import telemetry_schema
from experiments.errors import TieGradientMismatch
from experiments.telemetry.monitor import Monitor
from experiments.telemetry.tied import UseGradients, use_statistics
from experiments.tying import apply_param_ties, tie_groups


def untie(model: nn.Sequential) -> nn.Sequential:
    """The same network with every position its own module (same values, separate tensors)."""
    return nn.Sequential(*[copy.deepcopy(m) for m in model])


def captured(model, x):
    uses = UseGradients(model, tie_groups(model))
    uses.start()
    model(x).pow(2).sum().backward()
    uses.stop()
    return uses


def per_position_grads(untied, x, positions, leaf):
    untied(x).pow(2).sum().backward()
    return [getattr(untied[i], leaf).grad for i in positions]


@pytest.mark.parametrize("n_uses", [2, 3])
def test_linear_used_n_times(n_uses):
    torch.manual_seed(0)
    shared = nn.Linear(5, 5)
    layers = [nn.Linear(3, 5)]
    for _ in range(n_uses):
        layers += [shared, nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(5, 1))
    x = torch.randn(7, 3)
    untied = untie(model)
    uses = captured(model, x)
    positions = [1 + 2 * k for k in range(n_uses)]
    untied(x).pow(2).sum().backward()
    for leaf in ("weight", "bias"):
        expected = [getattr(untied[i], leaf).grad for i in positions]
        group = next(g for g in tie_groups(model) if g.canonical == f"1.{leaf}")
        got = uses.ordered(group)
        assert list(got) == [f"{i}.{leaf}" for i in positions]
        for alias, want in zip(got, expected):
            torch.testing.assert_close(got[alias], want)
        torch.testing.assert_close(sum(got.values()), getattr(shared, leaf).grad)


def test_shared_layernorm_and_conv1d():
    torch.manual_seed(0)
    norm = nn.LayerNorm(6)
    model = nn.Sequential(nn.Linear(4, 6), norm, nn.Linear(6, 6), norm, nn.Linear(6, 1))
    x = torch.randn(9, 4)
    untied = untie(model)
    uses = captured(model, x)
    w3, w1 = per_position_grads(untied, x, [3, 1], "weight")
    torch.testing.assert_close(uses.grads["1.weight"]["1.weight"], w1)
    torch.testing.assert_close(uses.grads["1.weight"]["3.weight"], w3)

    conv = nn.Conv1d(2, 2, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    x = torch.randn(4, 2, 10)
    untied = untie(model)
    uses = captured(model, x)
    g0, g2 = per_position_grads(untied, x, [0, 2], "weight")
    torch.testing.assert_close(uses.grads["0.weight"]["0.weight"], g0)
    torch.testing.assert_close(uses.grads["0.weight"]["2.weight"], g2)


def test_parameter_tied_between_two_modules():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    apply_param_ties(model, [["0.weight", "2.weight"]])
    x = torch.randn(6, 4)
    untied = untie(model)  # deepcopy of each position: 0.weight and 2.weight become separate
    uses = captured(model, x)
    g0, g2 = per_position_grads(untied, x, [0, 2], "weight")
    assert list(uses.ordered(tie_groups(model)[0])) == ["0.weight", "2.weight"]
    torch.testing.assert_close(uses.grads["0.weight"]["0.weight"], g0)
    torch.testing.assert_close(uses.grads["0.weight"]["2.weight"], g2)
    torch.testing.assert_close(model[0].weight.grad, g0 + g2)
    assert "0.bias" not in uses.grads  # only tied parameters are split


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


def test_frozen_and_no_grad_uses_are_skipped_and_a_failed_forward_restores_parameters():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    shared.weight.requires_grad_(False)  # trainer.freeze
    uses = captured(model, torch.randn(3, 4))
    assert set(uses.grads) == {"0.bias"} and sorted(uses.grads["0.bias"]) == ["0.bias", "2.bias"]
    with torch.no_grad():
        uses.start()
        model(torch.randn(3, 4))
    assert not uses.grads
    uses.start()
    with pytest.raises(RuntimeError):
        model(torch.randn(3, 5))  # wrong width: raises inside the first call, after the views went in
    uses.stop()
    assert isinstance(shared._parameters["bias"], nn.Parameter) and shared.bias is model[2].bias
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]