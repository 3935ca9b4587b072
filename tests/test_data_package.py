"""The data package: dispatch by `_target_`, the book's synthetic data, slice batching."""

import pytest
import torch

from conftest import CONF, read_events
from experiments.config import compose_config, data_schemas
from experiments.data import Dataset, load_data
from experiments.errors import ConfigError
from experiments.training import train


def test_synthetic_follows_the_book(make_cfg):
    cfg = make_cfg([]).data
    data = load_data(cfg, seed=0)
    assert data.train_x.shape == (1000, 4) and data.val_x.shape == (1000, 4)
    assert data.train_y.shape == (1000, 1)
    # Least squares recovers w and b within the noise level.
    x = torch.cat([data.train_x, torch.ones(1000, 1)], 1)
    solution = torch.linalg.lstsq(x, data.train_y).solution.flatten()
    torch.testing.assert_close(solution, torch.tensor([*cfg.true_w, cfg.true_b]), atol=5e-3, rtol=0)
    residual = data.train_y - x @ solution[:, None]
    assert 0.008 < residual.std().item() < 0.012


def test_same_seed_same_data(make_cfg):
    cfg = make_cfg([]).data
    a, b, c = load_data(cfg, 0), load_data(cfg, 0), load_data(cfg, 1)
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x, c.train_x)


def test_batches_cover_the_epoch_once(make_cfg):
    data = load_data(make_cfg(["data.n_train=100", "data.batch_size=32"]).data, 0)
    batches = list(data.batches(torch.Generator().manual_seed(0)))
    assert [len(x) for x, _ in batches] == [32, 32, 32, 4] == [len(y) for _, y in batches]
    rows = torch.cat([x for x, _ in batches])
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, data.train_x.tolist()))
    assert not torch.equal(rows, data.train_x)  # shuffled
    assert data.steps_per_epoch() == 4


@pytest.mark.parametrize("override", ["data.batch_size=0", "data.n_train=0", "data.noise=-1"])
def test_bad_sizes_are_named(make_cfg, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key):
        load_data(make_cfg([override]).data, 0)


def parabola(cfg, seed):
    """A data source of the test's own: y = x², no schema of ours involved."""
    x = torch.linspace(-1, 1, cfg.n, dtype=torch.float32).reshape(-1, 1)
    y = x ** 2
    return Dataset(x[::2], y[::2], x[1::2], y[1::2], cfg.task, cfg.batch_size, 1)


def test_a_new_dataset_is_a_target_in_a_yaml(tmp_path):
    """A YAML in the user's own config folder naming a loader by `_target_` is a dataset."""
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "parabola.yaml").write_text(
        "# python train.py hydra.searchpath=[file://conf] data=parabola\n"
        "_target_: test_data_package.parabola\nbatch_size: 8\nn: 64\n")  # task, num_outputs: the defaults
    cfg = compose_config([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "data=parabola", "trainer.epochs=2"])
    assert cfg.data.n == 64
    data = load_data(cfg.data, 0)
    assert (cfg.data.task, cfg.data.num_outputs, cfg.data.name) == ("regression", 1, "test_data_package.parabola")
    assert torch.equal(data.train_y, data.train_x ** 2) and data.steps_per_epoch() == 4
    train(cfg, tmp_path / "run")
    assert [e.step for e in read_events(tmp_path / "run").Scalars("loss/val")] == [4, 8]


def test_every_source_module_has_its_schema_and_yaml():
    """Each module of experiments.data with a Config is registered under its name, and
    conf/data/<name>.yaml uses it."""
    schemas = data_schemas()
    assert set(schemas) == {"synthetic", "digits", "fashion_mnist", "csv", "zipf_text", "text", "time_machine"}
    for name, schema in schemas.items():
        assert f"/schema/data/{name}@_here_" in (CONF / "data" / f"{name}.yaml").read_text()
        assert schema._target_.endswith(".load") and compose_config([f"data={name}"]).data._target_ == schema._target_


@pytest.mark.parametrize("source, task, actual", [("digits", "regression", "classification"),
                                                  ("zipf_text", "classification", "next_token")])
def test_a_task_the_data_does_not_have_is_an_error(source, task, actual):
    """A source whose task is fixed does not quietly train another one than data.task says."""
    cfg = compose_config([f"data={source}", f"data.task={task}"]).data
    with pytest.raises(ConfigError, match=f"data.task='{task}', but the {source} data is a {actual} task"):
        load_data(cfg, seed=0)
