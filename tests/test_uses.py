"""Per-use views: each use's gradient of a tied parameter, checked against untied copies computed by the test."""

import copy

import pytest
import torch
from torch import nn

from experiments.errors import ConfigError
from experiments.tying import apply_param_ties, tie_groups
from experiments.uses import UseViews


def untie(model: nn.Sequential) -> nn.Sequential:
    """The same network with every position its own module (same values, separate tensors)."""
    return nn.Sequential(*[copy.deepcopy(m) for m in model])


def captured(model, x):
    uses = UseViews(model, tie_groups(model))
    uses.start_capture()
    model(x).pow(2).sum().backward()
    uses.stop_capture()
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


def test_frozen_and_no_grad_uses_are_skipped_and_a_failed_forward_restores_parameters():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    shared.weight.requires_grad_(False)  # trainer.freeze
    uses = captured(model, torch.randn(3, 4))
    assert set(uses.grads) == {"0.bias"} and sorted(uses.grads["0.bias"]) == ["0.bias", "2.bias"]
    with torch.no_grad():
        uses.start_capture()
        model(torch.randn(3, 4))
    assert not uses.grads
    uses.start_capture()
    with pytest.raises(RuntimeError):
        model(torch.randn(3, 5))  # wrong width: raises inside the first call, after the views went in
    uses.stop_capture()
    assert isinstance(shared._parameters["bias"], nn.Parameter) and shared.bias is model[2].bias
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]

def test_grad_scale_makes_grad_the_scaled_sum_of_the_uses():
    """model.grad_scale: .grad is the sum over uses of scale x that use's own gradient (from untied
    copies), on every step, and the captured uses are the scaled ones (what the optimizer gets)."""
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(3, 4), shared, nn.Tanh(), shared, nn.Linear(4, 1))
    x = torch.randn(6, 3)
    g1, g3 = per_position_grads(untie(model), x, [1, 3], "weight")
    views = UseViews(model, tie_groups(model), {"1.weight": 3.0, "3.weight": 0.5})
    for _ in range(2):  # not only on captured steps
        model.zero_grad()
        model(x).pow(2).sum().backward()
        torch.testing.assert_close(shared.weight.grad, 3.0 * g1 + 0.5 * g3)
    views.start_capture()
    model.zero_grad()
    model(x).pow(2).sum().backward()
    views.stop_capture()
    uses = views.ordered(tie_groups(model)[0])
    torch.testing.assert_close(uses["1.weight"], 3.0 * g1)
    torch.testing.assert_close(uses["3.weight"], 0.5 * g3)
    torch.testing.assert_close(shared.bias.grad, sum(per_position_grads(untie(model), x, [1, 3], "bias")))  # unscaled
    views.close()
    model.zero_grad()
    model(x).pow(2).sum().backward()
    torch.testing.assert_close(shared.weight.grad, g1 + g3)  # closed: no scaling any more


def test_grad_scale_of_one_is_bit_identical_to_none(tmp_path):
    from experiments.config import compose_config
    from experiments.training import train

    finals = []
    for name, extra in (("none", []), ("one", ["+model.grad_scale={2.weight:1.0,4.bias:1.0}"])):
        cfg = compose_config(["model=tied", "trainer.epochs=2", "data.n_train=256", "telemetry=off", *extra])
        train(cfg, tmp_path / name)
        finals.append(torch.load(tmp_path / name / "weights_final.pt", weights_only=True)["state_dict"])
    assert finals[0].keys() == finals[1].keys()
    for key in finals[0]:
        assert torch.equal(finals[0][key], finals[1][key]), key


def test_grad_scale_of_no_use_of_a_tied_parameter_lists_the_uses():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4))
    shared = model[1]
    model.append(shared)
    with pytest.raises(ConfigError, match=r"'0.weight' is no use of a tied parameter.*Uses.*1.bias, 1.weight, 2.bias, 2.weight"):
        UseViews(model, tie_groups(model), {"0.weight": 2.0})
    with pytest.raises(ConfigError, match="none: this model has no tied parameter"):
        UseViews(nn.Sequential(nn.Linear(3, 4)), [], {"0.weight": 2.0})
