"""Signals are classes keyed by their config field: a new one is a class, switched on by config."""

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from conftest import read_events
from experiments.config import compose_config, register_configs, telemetry_schema
from experiments.errors import ConfigError
from experiments.telemetry.monitor import cadences
from experiments.telemetry.signals import SIGNALS, Signal
from experiments.training import train


@pytest.fixture
def first_weight_mean():
    """A signal of the test's own: the mean of the first parameter after each due step."""

    class FirstWeightMean(Signal):
        name, every, enabled = "test_first_weight_mean", 3, False  # off unless the config says so

        def after_step(self, step, record):
            record.add("custom/first_weight_mean", self.watched.params[0].detach().mean())

    register_configs()  # the telemetry schema now has telemetry.test_first_weight_mean
    yield FirstWeightMean
    del SIGNALS[FirstWeightMean.name]
    register_configs()


def test_a_new_signal_is_one_class_enabled_by_config(first_weight_mean, tmp_path):
    field = f"telemetry.{first_weight_mean.name}"
    off = compose_config([])
    assert OmegaConf.select(off, f"{field}.enabled") is False and OmegaConf.select(off, f"{field}.every") == 3
    cfg = compose_config(["model=tied", "trainer.epochs=1", "data.n_train=288", f"{field}.enabled=true"])
    train(cfg, tmp_path)  # 288 / 32 = 9 steps: logged at 1, 3, 6, 9
    logged = {e.step: e.value for e in read_events(tmp_path).Scalars("custom/first_weight_mean")}
    assert sorted(logged) == [1, 3, 6, 9]
    final = torch.load(tmp_path / "weights_final.pt", weights_only=True)["state_dict"]["0.weight"]
    assert logged[9] == pytest.approx(final.mean().item(), rel=1e-6)  # the last step's value is the final weight's
    assert logged[1] != logged[9]


def test_a_config_field_with_no_signal_behind_it_is_an_error():
    with pytest.raises(ConfigCompositionException, match="telemetry.nonexistent"):
        compose_config(["telemetry.nonexistent.every=3"])  # the schema refuses it while composing
    appended = compose_config(["+telemetry.nonexistent.every=3"])  # Hydra's `+` adds past the schema...
    with pytest.raises(ConfigError, match="telemetry.nonexistent: there is no signal of that name"):
        cadences(appended.telemetry)  # ...and the monitor refuses it before anything is written
    cfg = OmegaConf.structured(telemetry_schema())  # a config built in code, without the schema's guard
    with open_dict(cfg):
        cfg.nonexistent = {"enabled": True, "every": 3}
    with pytest.raises(ConfigError, match="Signals: activations, grad_norm"):
        cadences(cfg)


def test_every_builtin_signal_has_its_config_field():
    fields = set(OmegaConf.structured(telemetry_schema())) - {"enabled"}
    assert fields == set(SIGNALS) >= {"loss", "param_norm", "grad_norm", "tied", "activations", "update_ratio",
                                      "histograms"}


@pytest.mark.parametrize("layers", [2, 10])  # 4 tensors: fused norms; 20 tensors: the flat copy
def test_update_ratio_of_an_all_zero_parameter_is_nan(tmp_path, layers):
    import math

    from torch import nn

    from experiments.telemetry.monitor import Monitor

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(layers)])
    nn.init.zeros_(model[0].bias)
    cfg = OmegaConf.structured(telemetry_schema())
    cfg.update_ratio.every = 1
    monitor = Monitor(tmp_path, model, cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    monitor.before_forward(1)
    model(torch.randn(8, 3)).pow(2).mean().backward()
    monitor.after_backward(1)
    optimizer.step()
    written = monitor.after_step(1, 0.0)
    monitor.close()
    assert math.isnan(written["update_ratio/0.bias"]) and model[0].bias.abs().sum() > 0  # it moved; from nothing
    expected = ((model[0].weight.detach() - before["0.weight"]).norm() / before["0.weight"].norm()).item()
    assert written["update_ratio/0.weight"] == pytest.approx(expected, rel=1e-5)
    assert math.isnan(read_events(tmp_path).Scalars("update_ratio/0.bias")[0].value)
