"""Tied parameters: gradients sum over uses, manifests, YAML parameter ties, broken ties."""

import copy

import pytest
import torch
from torch import nn

from experiments.errors import BrokenTieError, ConfigError
from experiments.models import build_model, materialize
from experiments.tying import apply_param_ties, tie_groups, tie_manifest, verify_ties


def tied_model(make_cfg, *overrides):
    torch.manual_seed(0)
    model = build_model(make_cfg(["model=tied", *overrides]).model)
    materialize(model, torch.rand(2, 4))
    return model


def test_shared_grad_is_sum_of_untied_copies(make_cfg):
    net = tied_model(make_cfg)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    untied = nn.Sequential(*[copy.deepcopy(m) for m in net])  # positions 2 and 4 become separate copies
    assert untied[2] is not untied[4]
    nn.functional.mse_loss(net(x), y).backward()
    nn.functional.mse_loss(untied(x), y).backward()
    for leaf in ("weight", "bias"):
        expected = getattr(untied[2], leaf).grad + getattr(untied[4], leaf).grad
        torch.testing.assert_close(getattr(net[2], leaf).grad, expected)
        assert not torch.allclose(getattr(untied[2], leaf).grad, expected)  # each use is only a part


def test_manifest(make_cfg):
    net = tied_model(make_cfg)
    assert tie_manifest(net) == {"2.weight": ["2.weight", "4.weight"], "2.bias": ["2.bias", "4.bias"]}
    three = tied_model(make_cfg, "model.uses=3")
    assert tie_manifest(three)["2.weight"] == ["2.weight", "4.weight", "6.weight"]
    assert [g.canonical for g in tie_groups(build_model(make_cfg(["model=mlp"]).model))] == []


def test_param_ties_from_yaml(make_cfg):
    net = tied_model(make_cfg, "model.uses=1")
    apply_param_ties(net, [["0.bias", "2.bias"]])
    assert net[0].bias is net[2].bias
    assert tie_manifest(net) == {"0.bias": ["0.bias", "2.bias"]}


def test_param_tie_errors_name_the_problem(make_cfg):
    net = tied_model(make_cfg)
    with pytest.raises(ConfigError, match=r"'0.weight' \(8, 4\).*'2.weight' \(8, 8\)"):
        apply_param_ties(net, [["0.weight", "2.weight"]])
    with pytest.raises(ConfigError, match="no parameter named '9.weight'.*Valid names: 0.weight"):
        apply_param_ties(net, [["0.weight", "9.weight"]])


def test_broken_tie_is_caught(make_cfg):
    net = tied_model(make_cfg)
    apply_param_ties(net, [["0.bias", "2.bias"]])
    manifest = tie_manifest(net)
    verify_ties(net, manifest)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    # A shared module keeps one attribute, but a parameter tied between two modules
    # gets two separate tensors from assign=True loading.
    net.load_state_dict(state, assign=True)
    verify_ties(net, {"2.weight": ["2.weight", "4.weight"]})  # the module-level tie survives
    with pytest.raises(BrokenTieError, match="'0.bias' and '2.bias'"):
        verify_ties(net, manifest)


def test_loading_weights_checks_every_tie(make_cfg, tmp_path):
    """load_weights verifies the saved manifest: a model whose tie is gone is caught, both names given."""
    from experiments.checkpoints import load_weights, save_weights

    tied = tied_model(make_cfg)
    apply_param_ties(tied, [["0.bias", "2.bias"]])
    save_weights(tied, tmp_path / "w.pt")
    same = tied_model(make_cfg)
    apply_param_ties(same, [["0.bias", "2.bias"]])
    assert load_weights(same, tmp_path / "w.pt")["0.bias"] == ["0.bias", "2.bias", "4.bias"]
    torch.testing.assert_close(same[0].bias, tied[0].bias)
    untied = tied_model(make_cfg)  # the same network without the YAML tie
    with pytest.raises(BrokenTieError, match="'0.bias' and '2.bias'"):
        load_weights(untied, tmp_path / "w.pt")


def test_device_and_dtype_moves_keep_ties(make_cfg):
    net = tied_model(make_cfg)
    apply_param_ties(net, [["0.bias", "2.bias"]])
    manifest = tie_manifest(net)
    net.to(torch.float64)
    verify_ties(net, manifest)
    if torch.cuda.is_available():
        net.to("cuda")
        verify_ties(net, manifest)
