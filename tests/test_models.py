"""The seeds' printed facts, reproduced through our builder and YAML model configs."""

import pytest
import torch
from torch import nn

from experiments.errors import ConfigError
from experiments.models import build_model, materialize

NESTED_TREE = """Sequential(
  (0): Sequential(
    (block 0): Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=4, bias=True)
      (3): ReLU()
    )
    (block 1): Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=4, bias=True)
      (3): ReLU()
    )
    (block 2): Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=4, bias=True)
      (3): ReLU()
    )
    (block 3): Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=4, bias=True)
      (3): ReLU()
    )
  )
  (1): Linear(in_features=4, out_features=1, bias=True)
)"""

X = torch.rand(size=(2, 4))


def built(make_cfg, *overrides):
    model = build_model(make_cfg(list(overrides)).model)
    materialize(model, X)
    return model


def test_mlp_matches_seed(make_cfg):
    net = build_model(make_cfg(["model=mlp"]).model)
    assert isinstance(net[0], nn.LazyLinear) and isinstance(net[2], nn.LazyLinear)  # lazy before a batch
    assert net(X).shape == torch.Size([2, 1])
    assert list(net[2].state_dict()) == ["weight", "bias"]
    assert type(net[2].bias) is nn.Parameter and net[2].bias.data.shape == torch.Size([1])
    assert net[2].weight.grad is None
    shapes = [(n, p.shape) for n, p in net.named_parameters()]
    assert shapes == [("0.weight", torch.Size([8, 4])), ("0.bias", torch.Size([8])),
                      ("2.weight", torch.Size([1, 8])), ("2.bias", torch.Size([1]))]
    assert [(n, p.shape) for n, p in net[0].named_parameters()] == [("weight", torch.Size([8, 4])),
                                                                     ("bias", torch.Size([8]))]
    assert torch.equal(net.state_dict()["2.bias"], net[2].bias.data)
    assert sum(p.numel() for p in net.parameters()) == 49


def test_nested_prints_the_seed_tree(make_cfg):
    rgnet = built(make_cfg, "model=nested")
    assert str(rgnet) == NESTED_TREE
    assert sum(p.numel() for p in rgnet.parameters()) == 309
    assert rgnet[0][1][0].bias.shape == torch.Size([8])
    assert "0.block 1.2.weight" in dict(rgnet.named_parameters())


def test_tied_is_one_module_object(make_cfg):
    net = built(make_cfg, "model=tied")
    assert net[2] is net[4]
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]
    state = net.state_dict()
    assert {"4.weight", "4.bias"} <= set(state)
    assert state["4.weight"].data_ptr() == state["2.weight"].data_ptr()
    assert sum(p.numel() for p in net.parameters()) == 121
    # The seed's check: eight Trues, before and after writing through one name.
    assert (net[2].weight.data[0] == net[4].weight.data[0]).tolist() == [True] * 8
    net[2].weight.data[0, 0] = 100
    assert (net[2].weight.data[0] == net[4].weight.data[0]).tolist() == [True] * 8
    assert net[4].weight.data[0, 0] == 100


def test_sizes_and_activation_are_config_values(make_cfg):
    net = built(make_cfg, "model=mlp", "model.width=16", "model.depth=3", "model.activation=torch.nn.Tanh")
    assert [type(m).__name__ for m in net] == ["Linear", "Tanh"] * 3 + ["Linear"]
    assert net[0].weight.shape == (16, 4)
    tied = built(make_cfg, "model=tied", "model.uses=3")
    assert tied[2] is tied[4] is tied[6] and len(tied) == 9
    nested = built(make_cfg, "model=nested", "model.blocks=2")
    assert list(nested[0]._modules) == ["block 0", "block 1"]


def test_lazy_off_needs_input_sizes(make_cfg):
    cfg = make_cfg(["model=mlp", "model.lazy=false"])
    with pytest.raises(ConfigError, match="in_features"):
        build_model(cfg.model)


def test_any_torch_module_by_target(make_cfg):
    cfg = make_cfg(["model=mlp", "+model.layers.0.body.1.negative_slope=0.2",
                    "model.activation=torch.nn.LeakyReLU"])
    net = built(make_cfg, "model=mlp", "model.activation=torch.nn.LeakyReLU")
    assert isinstance(net[1], nn.LeakyReLU)
    assert cfg.model.layers[0].body[1].negative_slope == 0.2


def test_unknown_shared_layer_is_named(make_cfg):
    cfg = make_cfg(["model=tied", "model.layers.2.body.0=sharde"])
    with pytest.raises(ConfigError, match="'sharde' is not declared under model.shared"):
        build_model(cfg.model)


def test_unknown_target_is_named(make_cfg):
    cfg = make_cfg(["model=mlp", "model.activation=torch.nn.Relu"])
    with pytest.raises(ConfigError, match="torch.nn.Relu"):
        build_model(cfg.model)
