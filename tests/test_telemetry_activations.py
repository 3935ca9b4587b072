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


def test_sums_of_two_uneven_shares_give_the_whole_batch_statistics():
    """What a distributed run adds up across ranks (sums, sums of squares, counts, each unit's non-zero count),
    from two uneven shares of a batch, gives the statistics of the whole batch (dead units included: a unit
    alive in one share only is not dead)."""
    torch.manual_seed(0)
    first_layer, shared = nn.Linear(3, 5), nn.Linear(5, 5)
    model = nn.Sequential(first_layer, nn.ReLU(), shared, nn.Tanh(), shared)
    with torch.no_grad():
        first_layer.weight.abs_()
        first_layer.bias[:2] = -10.0  # units 0 and 1 of the ReLU: dead on most rows
    x = torch.randn(9, 3)
    x[7] = 50.0  # ... but alive on row 7, which only the second share has
    stats = ActivationStats(model)

    def run(rows):
        stats.start()
        model(rows)
        return stats.partials(keep_hooks=True)
    whole_tags, whole = stats.finish(run(x))
    first, second = run(x[:4]), run(x[4:])
    tags_, values = stats.finish(first + second)
    stats.close()
    assert tags_ == whole_tags and {"act/1/dead_frac", "act/2/mean", "act/4/mean"} <= set(tags_)
    assert torch.allclose(values, whole, rtol=1e-6, atol=1e-7)
    relu = torch.relu(first_layer(x))
    expected = (relu == 0).all(dim=0).float().mean().item()
    alone = (relu[:4] == 0).all(dim=0).float().mean().item()
    assert dict(zip(tags_, values.tolist()))["act/1/dead_frac"] == expected < alone  # alive in the second share
    assert dict(zip(whole_tags, whole.tolist()))["act/0/std"] == pytest.approx(first_layer(x).std().item(), rel=1e-6)
