"""Activation statistics and update ratios against the test's own counting."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import read_events
from experiments.config import telemetry_schema
from experiments.telemetry.activations import ActivationStats
from experiments.telemetry.monitor import Monitor


def test_dead_frac_counts_units_dead_on_the_whole_batch():
    layer = nn.Linear(2, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
        layer.bias.copy_(torch.tensor([0.0, 0.0, -1.0, -5.0]))
    model = nn.Sequential(layer, nn.ReLU())
    x = torch.tensor([[1.0, 1.0], [2.0, 3.0], [-1.0, 2.0]])
    # unit 0: x0 -> [1, 2, 0]: alive; unit 1: -x0 -> [0, 0, 1]: alive; unit 2: -1 -> dead; unit 3: x1 - 5 <= 0: dead
    out = torch.relu(layer(x))
    expected = sum(bool((out[:, j] == 0).all()) for j in range(4)) / 4
    assert expected == 0.5
    stats = ActivationStats(model)
    stats.start()
    model(x)
    tags, values = stats.collect()
    values = dict(zip(tags, values.tolist()))
    assert values["act/1/dead_frac"] == expected
    assert values["act/0/mean"] == pytest.approx(layer(x).mean().item())
    assert values["act/0/std"] == pytest.approx(layer(x).std().item())
    assert "act/0/dead_frac" not in values  # only after a ReLU
    model(x)
    tags, values = stats.collect()
    assert tags == [] and values.numel() == 0  # inactive: nothing recorded


def test_tied_layer_activations_are_per_use():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    stats = ActivationStats(model)
    stats.start()
    model(torch.randn(4, 3))
    tags, _ = stats.collect()
    assert {"act/0/mean", "act/2/mean", "act/1/dead_frac"} <= set(tags)


def test_update_ratio_is_one_sgd_step(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    cfg = OmegaConf.structured(telemetry_schema())
    cfg.update_ratio.every = 1
    monitor = Monitor(tmp_path, model, cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    monitor.before_forward(1)
    loss = model(torch.randn(8, 3)).pow(2).mean()
    loss.backward()
    monitor.after_backward(1)
    optimizer.step()
    written = monitor.after_step(1, loss.item())
    monitor.close()
    for name, p in model.named_parameters():
        expected = ((p.detach() - before[name]).norm() / before[name].norm()).item()
        assert written[f"update_ratio/{name}"] == pytest.approx(expected, rel=1e-5)
    assert read_events(tmp_path).Scalars("update_ratio/0.weight")[0].value == pytest.approx(
        written["update_ratio/0.weight"])
