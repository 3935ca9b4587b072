"""A data source of your own, outside the package (the "Extend the project" page's example).

    PYTHONPATH=docs/examples python train.py 'hydra.searchpath=[file://docs/examples/my_conf]' data=mine

``load(cfg, seed)`` gets the ``data`` node of the config and the run's seed and returns a ``Dataset``.
"""

import torch

from experiments.data.dataset import Dataset


def load(cfg, seed: int) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(cfg.n_train + cfg.n_val, cfg.features, generator=gen) * 4 - 2
    y = torch.sin(x).sum(dim=1, keepdim=True)  # a smooth function of every feature
    return Dataset(x[: cfg.n_train], y[: cfg.n_train], x[cfg.n_train:], y[cfg.n_train:], cfg.task, cfg.batch_size, 1)
