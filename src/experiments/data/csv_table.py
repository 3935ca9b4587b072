"""A user's own table: ``python train.py data=csv data.path=houses.csv data.target=price``.

Numeric feature columns are standardized with statistics of the training rows only, and so is a
regression target (``data.standardize_target``, default true): a house price around 500 would
otherwise make the first gradients large enough to diverge at the default learning rate. The
model then predicts the standardized target and ``loss/train``/``loss/val`` are MSEs in units of
the target's standard deviation: multiply by ``target_std**2`` for the MSE in the target's own
units, and ``Dataset.in_target_units(prediction)`` gives a prediction in them. The run's log
states the mean and standard deviation used. A classification target may hold numbers or names;
classes are indexed in sorted order.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from omegaconf import MISSING, DictConfig

from ..errors import ConfigError, DataError
from .dataset import DataConfig, Dataset, split, standardize
from .files import regular_file

log = logging.getLogger(__name__)


@dataclass
class Config(DataConfig):
    """A table of the user's: ``target`` column predicted from ``features`` (None: every other column)."""

    _target_: str = "experiments.data.csv_table.load"
    name: str = "csv"
    path: str = MISSING  # the file: a header row, then one row per example
    target: str = MISSING  # the column to predict
    features: Optional[List[str]] = None  # None: every other column (all numeric)
    num_outputs: Optional[int] = None  # None: 1 for regression, the number of classes for classification
    val_fraction: float = 0.2  # the share of the rows held out for validation (a seeded split)
    standardize_target: bool = True  # regression: train on (y - mean) / std of the training rows


def _number(value: str, path: Path, line: int, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"data.path={path}: row {line}, column '{column}' holds {value!r}, which is not a "
                          f"number. Fix the file, or leave the column out with data.features=[...].") from None
    if not math.isfinite(number):
        raise DataError(f"data.path={path}: row {line}, column '{column}' holds {value!r}, which is not a finite "
                        f"number (training on it would diverge). Fix or drop the row, or leave the column out "
                        f"with data.features=[...].")
    return number


def _read(path: Path):
    """The header and the non-empty rows (with their line numbers) of a UTF-8 CSV file."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            return header, [(i, row) for i, row in enumerate(reader, start=2) if row]
    except UnicodeDecodeError:
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            row = raw.count(b"\n", 0, e.start) + 1
            raise DataError(f"data.path={path}: not UTF-8 text (byte {raw[e.start]:#04x} in row {row}, at byte "
                            f"offset {e.start}). Save the table as UTF-8 CSV.") from None
        raise


def _class_indices(values: List[str]) -> List[int]:
    try:
        classes = sorted(set(values), key=float)
    except ValueError:
        classes = sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    return [index[v] for v in values]


def load(cfg: DictConfig, seed: int) -> Dataset:
    path = regular_file(Path(cfg.path), "data.path", cfg.path, "data=csv reads one CSV file: give its path.")
    header, rows = _read(path)
    if not header:
        raise DataError(f"data.path={cfg.path}: the file is empty; it needs a header row naming the columns.")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(f"data.path={path}: the header names {', '.join(map(repr, repeated))} more than once; "
                        f"a column must be named once to be chosen by name.")
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
        if num_outputs < 2:
            raise DataError(f"data.path={path}: the target column {cfg.target!r} holds one class only "
                            f"({labels[0]!r}); classification needs at least two. Is data.target the right column?")
    else:
        y = torch.tensor([[_number(v, path, line, cfg.target)] for (line, _), v in zip(rows, labels)])
        num_outputs = 1
    train_x, train_y, val_x, val_y = split(torch.tensor(x), y, cfg.val_fraction, seed)
    train_x, val_x = standardize(train_x, val_x)
    data = Dataset(train_x, train_y, val_x, val_y, cfg.task, cfg.batch_size, num_outputs)
    if cfg.task == "regression" and cfg.standardize_target:
        data.target_mean, data.target_std = train_y.mean(0), train_y.std(0)
        data.target_std = torch.where(data.target_std > 0, data.target_std, torch.ones_like(data.target_std))
        data.train_y, data.val_y = standardize(train_y, val_y)
        log.info("data.target=%s standardized with the training rows' mean %.6g and std %.6g: losses are in "
                 "standardized units (loss x %.6g = MSE in %s's own units)", cfg.target, data.target_mean.item(),
                 data.target_std.item(), data.target_std.item() ** 2, cfg.target)
    return data
