"""The seed's initialization examples, through the YAML init schemes."""

import logging
import math

import pytest
import torch

from experiments.errors import ConfigError
from experiments.initialization import initialize
from experiments.models import build_model, materialize


def init_model(make_cfg, *overrides, x=None):
    cfg = make_cfg(list(overrides))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    materialize(model, torch.rand(2, 4) if x is None else x)
    rules = initialize(model, cfg.init)
    return model, rules


def test_normal_weights_and_zero_bias(make_cfg):
    model, rules = init_model(make_cfg, "model=mlp", "model.width=4096", "init=normal")
    w = model[0].weight  # 4096 x 4 = 16384 samples
    n = w.numel()
    assert abs(w.mean().item()) < 4 * 0.01 / math.sqrt(n)
    assert abs(w.std().item() - 0.01) < 4 * 0.01 / math.sqrt(2 * n)
    assert torch.count_nonzero(model[0].bias) == 0 and torch.count_nonzero(model[2].bias) == 0
    assert rules["0.weight"].startswith("normal_")


def test_constant(make_cfg):
    model, _ = init_model(make_cfg, "init=constant")
    assert torch.all(model[0].weight == 1) and torch.all(model[0].bias == 0)
    model, _ = init_model(make_cfg, "init=constant", "init.value=3")
    assert torch.all(model[2].weight == 3)


def test_xavier_bound(make_cfg):
    model, _ = init_model(make_cfg, "model=tied", "init=xavier")
    for layer in (model[0], model[2], model[6]):
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.5 * bound  # spread over the range, not all zero


def test_mixed_is_the_seed_example(make_cfg):
    model, rules = init_model(make_cfg, "init=mixed")
    bound = math.sqrt(6 / (4 + 8))
    assert model[0].weight.abs().max() <= bound
    assert torch.all(model[2].weight == 42)
    assert rules["2.weight"] == "constant_(val=42.0)" and rules["0.bias"] == "pytorch default"


def test_d2l_custom_rule_and_init_lines(make_cfg, caplog):
    with caplog.at_level(logging.INFO, logger="experiments.initialization"):
        model, _ = init_model(make_cfg, "model=mlp", "init=d2l_custom")
    for layer in (model[0], model[2]):
        w = layer.weight
        assert torch.all((w == 0) | (w.abs() >= 5)) and w.abs().max() <= 10
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["Init 0.weight torch.Size([8, 4])", "Init 2.weight torch.Size([1, 8])"]


def test_tied_parameter_initialized_once(make_cfg, caplog):
    with caplog.at_level(logging.INFO, logger="experiments.initialization"):
        model, _ = init_model(make_cfg, "model=tied", "init=constant")
    assert sum("2.weight" in r.getMessage() for r in caplog.records) == 1
    assert not any("4.weight" in r.getMessage() for r in caplog.records)
    assert torch.all(model[4].weight == 1)


def test_rule_matches_an_alias(make_cfg):
    model, rules = init_model(make_cfg, "model=tied", "init=mixed", "init.rules.1.params=4.weight")
    assert torch.all(model[2].weight == 42) and "2.weight" in rules


def test_rule_matching_nothing_is_an_error(make_cfg):
    with pytest.raises(ConfigError, match=r"init.rules\[1\].*matches no parameter"):
        init_model(make_cfg, "init=mixed", "init.rules.1.params=9.weight")


def test_unknown_function_is_named(make_cfg):
    with pytest.raises(ConfigError, match="xavier_unifrom_"):
        init_model(make_cfg, "init=xavier", "init.rules.0.fn=xavier_unifrom_")


def test_negative_std_is_an_error(make_cfg):
    with pytest.raises(ConfigError, match=r"init.std=-1"):
        init_model(make_cfg, "init=normal", "init.std=-1")


def test_needs_materialized_layers(make_cfg):
    cfg = make_cfg(["init=xavier"])
    with pytest.raises(RuntimeError, match="forward"):
        initialize(build_model(cfg.model), cfg.init)


def test_default_keeps_pytorch_init(make_cfg):
    torch.manual_seed(0)
    model, rules = init_model(make_cfg, "init=default")
    assert set(rules.values()) == {"pytorch default"}
    assert model[0].weight.abs().max() <= 1 / math.sqrt(4)
