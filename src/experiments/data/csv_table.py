"""A user's own table: ``python train.py data=csv data.path=houses.csv data.target=price``.

Numeric feature columns are standardized with statistics of the training rows only. A
classification target may hold numbers or names; classes are indexed in sorted order.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from omegaconf import MISSING, DictConfig

from ..errors import ConfigError, DataError
from .dataset import DataConfig, Dataset, split, standardize


@dataclass
class Config(DataConfig):
    """A table of the user's: ``target`` column predicted from ``features`` (None: every other column)."""

    _target_: str = "experiments.data.csv_table.load"
    name: str = "csv"
    path: str = MISSING  # the file: a header row, then one row per example
    target: str = MISSING  # the column to predict
    features: Optional[List[str]] = None  # None: every other column (all numeric)
    num_outputs: Optional[int] = None  # None: 1 for regression, the number of classes for classification
    val_fraction: float = 0.2


def _number(value: str, path: Path, line: int, column: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(f"data.path={path}: row {line}, column '{column}' holds {value!r}, which is not a "
                          f"number. Fix the file, or leave the column out with data.features=[...].") from None


def _class_indices(values: List[str]) -> List[int]:
    try:
        classes = sorted(set(values), key=float)
    except ValueError:
        classes = sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    return [index[v] for v in values]


def load(cfg: DictConfig, seed: int) -> Dataset:
    path = Path(cfg.path)
    if not path.is_file():
        raise ConfigError(f"data.path={cfg.path}: no such file.")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        rows = [(i, row) for i, row in enumerate(reader, start=2) if row]
    if not header:
        raise DataError(f"data.path={cfg.path}: the file is empty; it needs a header row naming the columns.")
    if cfg.target not in header:
        raise ConfigError(f"data.target={cfg.target!r}: no such column in {path}. Columns: {', '.join(header)}.")
    features = list(cfg.features) if cfg.features else [c for c in header if c != cfg.target]
    unknown = [c for c in features if c not in header]
    if unknown:
        raise ConfigError(f"data.features: no column {', '.join(map(repr, unknown))} in {path}. "
                          f"Columns: {', '.join(header)}.")
    if not features:
        raise ConfigError(f"data.features: {path} has no feature column besides the target {cfg.target!r}.")
    columns = [header.index(c) for c in features]
    target = header.index(cfg.target)
    x, labels = [], []
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(f"data.path={path}: row {line} has {len(row)} fields, the header has {len(header)}.")
        x.append([_number(row[j].strip(), path, line, header[j]) for j in columns])
        labels.append(row[target].strip())
    if len(x) < 2:
        raise DataError(f"data.path={path}: {len(x)} data rows; at least 2 are needed for a train/validation split.")
    if cfg.task == "classification":
        y = torch.tensor(_class_indices(labels), dtype=torch.int64)
        num_outputs = int(y.max()) + 1
    else:
        y = torch.tensor([[_number(v, path, line, cfg.target)] for (line, _), v in zip(rows, labels)])
        num_outputs = 1
    train_x, train_y, val_x, val_y = split(torch.tensor(x), y, cfg.val_fraction, seed)
    train_x, val_x = standardize(train_x, val_x)
    return Dataset(train_x, train_y, val_x, val_y, cfg.task, cfg.batch_size, num_outputs)
