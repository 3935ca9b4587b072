"""Models of any class (target_models.py): a user's own module named by `_target_` in their own config
folder and on the command line, nested `_target_`s, the errors; and `+model._target_` on a layer-list
model, which used to train the default layers silently."""

import textwrap

import pytest
import torch
from omegaconf import OmegaConf
from conftest import read_events, run_cli

from experiments.config import compose_config
from experiments.errors import ConfigError
from experiments.experiment import build_experiment
from experiments.inspection import load_run, parameter_table
from experiments.training import train

USER_MODULE = '''
"""A user's own models, in a folder of their own (not part of the project)."""
from dataclasses import dataclass

import torch
from torch import nn


class TinyLM(nn.Module):
    """An embedding tied to its head; logits at every position, returned in a tuple."""

    def __init__(self, vocab, dim=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # one Parameter, two names

    def forward(self, ids):
        e = self.embed(ids).cumsum(1)  # position t sees tokens 0..t
        h = self.norm(torch.tanh(self.mix(e)) * torch.sigmoid(self.gate(e)))
        return (self.head(h),)


@dataclass
class TinyConfig:
    vocab: int
    dim: int = 8


def from_config(config, scale=1.0):
    model = TinyLM(config.vocab, config.dim)
    model.scale = scale
    return model


def not_a_module(vocab):
    return {"vocab": vocab}


class WrongWidth(TinyLM):
    def forward(self, ids):
        return super().forward(ids)[0][:, :, :-1]  # one logit short of the vocabulary
'''

DATA = ["data=zipf_text", "data.vocab=50", "data.n_train=256", "data.n_val=64", "data.context=4", "trainer.epochs=2",
        "telemetry.activations.enabled=false"]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A folder of the user's: my_models.py and my_conf/model/*.yaml."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "my_models.py").write_text(USER_MODULE)
    (folder / "my_conf" / "model").mkdir(parents=True)
    (folder / "my_conf" / "model" / "tiny.yaml").write_text(
        "# python train.py hydra.searchpath=[file://my_conf] model=tiny data=zipf_text\n"
        "_target_: my_models.TinyLM\nvocab: ${data.num_outputs}\ndim: 6\n")
    (folder / "my_conf" / "model" / "nested_tiny.yaml").write_text(textwrap.dedent("""\
        # python train.py hydra.searchpath=[file://my_conf] model=nested_tiny data=zipf_text
        defaults:
          - /schema/target_model@_here_
          - _self_
        name: nested_tiny
        _target_: my_models.from_config
        config: {_target_: my_models.TinyConfig, vocab: "${data.num_outputs}", dim: 4}
        scale: 2.0
        tie_embeddings: true
        """))
    return folder


@pytest.fixture
def user_cfg(user_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(user_dir))

    def make(*overrides):
        return compose_config([f"hydra.searchpath=[file://{user_dir / 'my_conf'}]", *DATA, *overrides])
    return make


def trained(cfg, run_dir):
    """Train in this process and save the config as Hydra does (.hydra/config.yaml), for load_run."""
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    train(cfg, run_dir)


def test_a_class_of_ones_own_in_ones_own_config_folder_trains(user_cfg, tmp_path):
    trained(user_cfg("model=tiny"), tmp_path / "run")
    exp = load_run(tmp_path / "run", allow_targets=["my_models.*"])
    assert type(exp.model).__name__ == "TinyLM" and exp.model.embed.weight.shape == (50, 6)
    assert exp.model.head.weight is exp.model.embed.weight  # the tie survives saving and loading
    assert exp.cfg.model.name == "my_models.TinyLM"  # no name given: the _target_
    events = read_events(tmp_path / "run")
    assert [e.step for e in events.Scalars("loss/val")] == [4, 8]
    assert "tied/embed.weight/use/head.weight/grad_norm" in events.Tags()["scalars"]


def test_nested_targets_are_built_first(user_cfg):
    exp = build_experiment(user_cfg("model=nested_tiny", "model.tie_embeddings=false"))  # its YAML has the key
    assert exp.model.embed.weight.shape == (50, 4) and exp.model.scale == 2.0
    assert exp.manifest == {"embed.weight": ["embed.weight", "head.weight"]}


def test_a_run_folder_naming_a_class_of_ones_own_is_refused_unless_allowed(user_cfg, tmp_path):
    trained(user_cfg("model=nested_tiny", "trainer.epochs=1"), tmp_path / "run")
    with pytest.raises(ConfigError, match="model._target_: refused to run 'my_models.from_config'"):
        load_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="model.config._target_: refused to run 'my_models.TinyConfig'"):
        load_run(tmp_path / "run", allow_targets=["my_models.from_config"])  # nested targets are guarded too
    assert load_run(tmp_path / "run", allow_targets=["my_models.*"]).model.scale == 2.0


def test_init_freeze_and_the_table_work_by_name(user_cfg):
    exp = build_experiment(user_cfg("model=tiny", "init=xavier", "trainer.freeze=[mix.*]"))
    assert not exp.model.mix.weight.requires_grad and not exp.model.mix.bias.requires_grad
    assert exp.model.embed.weight.requires_grad and exp.model.gate.weight.requires_grad
    assert exp.init_rules["embed.weight"].startswith("xavier_uniform_")
    assert exp.init_rules["norm.weight"] == "pytorch default"  # a LayerNorm's gain is no matrix (min_ndim: 2)
    assert torch.equal(exp.model.norm.weight, torch.ones(6))
    rows = parameter_table(exp.model, exp.init_rules)
    assert rows[0]["name"] == "embed.weight" and rows[0]["aliases"] == ["embed.weight", "head.weight"]


def test_model_tie_ties_parameters_of_ones_own_class_by_name(user_cfg):
    tied = build_experiment(user_cfg("model=tiny", "+model.tie=[[mix.weight,gate.weight]]"))
    assert tied.model.gate.weight is tied.model.mix.weight
    assert tied.manifest["mix.weight"] == ["mix.weight", "gate.weight"]
    twin = build_experiment(user_cfg("model=tiny", "+model.tie=[[mix.weight,gate.weight]]",
                                     "+model.tie_embeddings=false"))  # (a YAML naming /schema/target_model: no +)
    assert twin.model.gate.weight is not twin.model.mix.weight
    assert torch.equal(twin.model.gate.weight, tied.model.mix.weight)  # the untied twin starts from the same values


@pytest.mark.parametrize("overrides, message", [
    (["model=custom"], "model._target_ is not set: name the class"),
    (["model=custom", "model._target_=my_models.nothing"], "model._target_: cannot import 'my_models.nothing'"),
    (["model=custom", "model._target_=my_models.not_a_module", "+model.vocab=3"],
     "model._target_=my_models.not_a_module returned a builtins.dict, not a torch.nn.Module"),
    (["model=custom", "model._target_=my_models.TinyLM", "+model.vocab=3", "+model.depth=2"],
     r"model: my_models.TinyLM\(vocab=3, depth=2\) failed: TypeError: .*depth"),
    (["model=custom", "model._target_=my_models.TinyLM", "+model.vocab=${data.num_outputs}", "model.tie=3"],
     "model.tie=3: must be a list of groups of parameter names"),
    (["model=custom", "model._target_=my_models.TinyLM", "+model.vocab=???"], r"model.vocab is not set \(\?\?\?\)"),
    (["model=custom", "model._target_=my_models.WrongWidth", "+model.vocab=${data.num_outputs}"],
     r"model=custom on data=zipf_text: the model's output has shape \(32, 4, 49\) for a batch of 32"),
    (["model=mlp", "+model._target_=my_models.TinyLM"], "model._target_: this model is a list of layers"),
    (["model=tied_lm", "+model.vocab=3"], "model.vocab: ModelConfig has no key 'vocab'"),
    (["+trainer.epoch=3"], "trainer.epoch: TrainerConfig has no key 'epoch'"),
])
def test_what_cannot_build_a_model_is_named(user_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_experiment(user_cfg("data.batch_size=32", *overrides))


def test_the_optimizers_own_arguments_still_pass(user_cfg):
    """+optim.<key> is an argument of the optimizer, not a key nothing reads."""
    cfg = user_cfg("model=tied_lm", "+optim.nesterov=true", "optim.momentum=0.9")
    build_experiment(cfg)  # no error


def test_a_class_of_ones_own_on_the_command_line(user_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(user_dir))
    result = run_cli(["model=custom", "model._target_=my_models.TinyLM", "+model.vocab=50", "+model.dim=5", *DATA,
                      f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode == 0, result.stderr
    events = read_events(tmp_path / "run")
    losses = [e.value for e in events.Scalars("loss/train")]
    assert len(losses) >= 2 and all(v == v for v in losses) and losses[-1] < losses[0]
    assert "training custom (" in result.stdout + result.stderr

