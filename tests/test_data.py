"""The book's synthetic regression data and slice batching."""

import pytest
import torch

from experiments.config import ConfigError
from experiments.data import load_data


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
