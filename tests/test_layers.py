"""Our own layers: the unrolled cell is torch's RNN/GRU step by step, with one named use per time step."""

import copy

import pytest
import torch
from torch import nn

from experiments.layers import Residual, Unrolled
from experiments.tying import tie_groups
from experiments.uses import Uses

STEPS, IN, HIDDEN = 5, 3, 4


@pytest.mark.parametrize("cell, fused", [("rnn", nn.RNN), ("gru", nn.GRU)])
def test_unrolled_equals_torch_fused_rnn(cell, fused):
    torch.manual_seed(0)
    layer = Unrolled(IN, HIDDEN, STEPS, cell=cell)
    reference = fused(IN, HIDDEN, batch_first=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(reference, f"{name}_l0").copy_(getattr(layer.cell, name))
    x = torch.randn(6, STEPS, IN)
    _, h_last = reference(x)
    torch.testing.assert_close(layer(x), h_last[0])


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_each_time_step_is_a_named_use_whose_gradient_is_its_own(cell):
    """The gradient of use t equals that of a separate copy of the cell used only at step t; the
    uses add up to .grad."""
    torch.manual_seed(0)
    layer = Unrolled(IN, HIDDEN, STEPS, cell=cell)
    model = nn.Sequential(layer, nn.Linear(HIDDEN, 1))
    assert [n for n, _ in model.named_parameters()][:2] == ["0.t0.weight_ih", "0.t0.weight_hh"]
    (group,) = [g for g in tie_groups(model) if g.canonical == "0.t0.weight_hh"]
    assert group.aliases == [f"0.t{t}.weight_hh" for t in range(STEPS)]
    x = torch.randn(7, STEPS, IN)
    uses = Uses(model)
    uses.arm(capture=True)
    model(x).pow(2).sum().backward()
    uses.end()
    captured = uses.attribute()[0]["0.t0.weight_hh"]
    assert list(captured) == group.aliases  # each time step a use, named by its step, in order

    copies = [copy.deepcopy(layer.cell) for _ in range(STEPS)]  # untied: one cell per step
    head = copy.deepcopy(model[1])
    h = x.new_zeros(7, HIDDEN)
    for t in range(STEPS):
        h = copies[t](x[:, t], h)
    head(h).pow(2).sum().backward()
    for t in range(STEPS):
        torch.testing.assert_close(captured[f"0.t{t}.weight_hh"], copies[t].weight_hh.grad)
    torch.testing.assert_close(layer.cell.weight_hh.grad, sum(c.weight_hh.grad for c in copies))
    assert isinstance(layer.cell._parameters["weight_hh"], nn.Parameter)  # views gone after the step


def test_unrolled_state_dict_and_repr():
    layer = Unrolled(IN, HIDDEN, STEPS)
    state = layer.state_dict()
    assert len(state) == 4 * STEPS and state["t3.weight_hh"].data_ptr() == state["t0.weight_hh"].data_ptr()
    assert sum(p.numel() for p in layer.parameters()) == sum(p.numel() for p in layer.cell.parameters())
    assert "one cell, 5 time steps" in repr(layer)
    with pytest.raises(ValueError, match=r"\(batch, 5, features\)"):
        layer(torch.randn(2, 4, IN))


def test_residual_block():
    torch.manual_seed(0)
    block = Residual(4, "torch.nn.Tanh")
    x = torch.randn(3, 4)
    torch.testing.assert_close(block(x), x + block.outer(torch.tanh(block.inner(x))))
