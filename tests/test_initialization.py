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


def test_kind_rule_matching_no_parameter_of_its_kind_is_an_error(make_cfg):
    cfg = make_cfg(["init=normal"])
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False))
    with pytest.raises(ConfigError, match=r"init.rules\[1\] \(fn=zeros_, params='\*', module=None, kind=bias\) matches "
                                          r"no parameter of kind bias: .* Parameters: 0.weight\."):
        initialize(model, cfg.init)


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


def test_kind_covers_pytorch_names():
    """One rule: the word ``bias`` in the attribute name (split at ``_``) is a bias, else ``weight`` a weight."""
    from torch.nn.utils import parametrizations

    from experiments.initialization import kind_of

    net = torch.nn.ModuleDict({"cell": torch.nn.GRUCell(3, 4),
                               "rnn": torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True),
                               "att": torch.nn.MultiheadAttention(4, 2, add_bias_kv=True),
                               "att2": torch.nn.MultiheadAttention(4, 2, kdim=3, vdim=3),
                               "norm": parametrizations.weight_norm(torch.nn.Linear(3, 4))})
    kinds = {name: kind_of(name) for name, _ in net.named_parameters()}
    assert kinds == {
        "cell.weight_ih": "weight", "cell.weight_hh": "weight", "cell.bias_ih": "bias", "cell.bias_hh": "bias",
        **{f"rnn.{w}_{m}_l{i}{r}": "weight" if w == "weight" else "bias"
           for w in ("weight", "bias") for m in ("ih", "hh") for i in (0, 1) for r in ("", "_reverse")},
        "att.in_proj_weight": "weight", "att.in_proj_bias": "bias", "att.bias_k": "bias", "att.bias_v": "bias",
        "att.out_proj.weight": "weight", "att.out_proj.bias": "bias",
        "att2.q_proj_weight": "weight", "att2.k_proj_weight": "weight", "att2.v_proj_weight": "weight",
        "att2.in_proj_bias": "bias", "att2.out_proj.weight": "weight", "att2.out_proj.bias": "bias",
        "norm.bias": "bias", "norm.parametrizations.weight.original0": "weight",
        "norm.parametrizations.weight.original1": "weight",
    }
    assert kind_of("0.cls_token") is None and kind_of("weights") is None


def test_recurrent_scheme_reaches_every_cell_parameter(make_cfg):
    """init=recurrent on model=rnn (a GRU cell), set up as train.py sets it up: every cell weight is
    N(0, init.std) or orthogonal x gain, every bias 0, and the summary's Init column says which rule set each."""
    from experiments.experiment import build_experiment
    from experiments.summary import summary_markdown

    cfg = make_cfg(["model=rnn", "data=zipf_text", "data.vocab=40", "data.n_train=64", "data.n_val=16",
                    "model.width=64", "model.cell=gru", "init=recurrent", "init.gain=2"])
    exp = build_experiment(cfg)
    state = exp.model.state_dict()
    w_ih = state["1.t0.weight_ih"]  # (3 x 64) x 64 numbers: the std within a few percent of 0.1
    assert abs(w_ih.std().item() - 0.1) < 0.005 and abs(w_ih.mean().item()) < 0.005
    for name in ("1.t0.bias_ih", "1.t0.bias_hh", "2.bias"):
        assert torch.count_nonzero(state[name]) == 0, name
    w_hh = state["1.t0.weight_hh"]  # (192, 64): orthonormal columns times the gain
    assert torch.allclose(w_hh.T @ w_hh, 4 * torch.eye(64), atol=1e-4)
    rows = {line.split(" | ")[0].strip("| "): line for line in summary_markdown(exp.model, exp.init_rules).splitlines()}
    assert rows["1.t0.weight_ih"].endswith("| normal_(mean=0.0, std=0.1) |")
    assert rows["1.t0.bias_hh"].endswith("| zeros_() |")
    assert rows["1.t0.weight_hh"].endswith("| orthogonal_(gain=2.0) |")
    assert not [line for line in rows.values() if "pytorch default" in line]


def test_kind_rule_reports_parameters_of_no_kind(make_cfg, caplog):
    class WithToken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = torch.nn.Parameter(torch.ones(4))

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), WithToken())
    with caplog.at_level(logging.WARNING, logger="experiments.initialization"):
        rules = initialize(model, make_cfg(["init=normal"]).init)
    assert rules["1.cls_token"] == "pytorch default" and torch.all(model[1].cls_token == 1)
    warning, = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("init: 1.cls_token keep PyTorch's initial values: their names say neither weight nor "
                              "bias, so the kind rules that select them otherwise skip them (1.cls_token: "
                              "init.rules[0] (kind=weight), init.rules[1] (kind=bias))")
