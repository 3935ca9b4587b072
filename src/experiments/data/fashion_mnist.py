"""Fashion-MNIST from its four standard IDX files, optionally downloaded and checksummed.

    python train.py data=fashion_mnist data.download=true model=mlp model.width=256 optim=adam
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from ..errors import ConfigError, DataError
from .dataset import DataConfig, Dataset
from .download import fetch

BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {  # the official files and their MD5 sums (as torchvision and the dataset's authors list them)
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass
class Config(DataConfig):
    _target_: str = "experiments.data.fashion_mnist.load"
    name: str = "fashion_mnist"
    task: str = "classification"
    num_outputs: Optional[int] = 10
    root: str = "data/fashion_mnist"  # the four IDX .gz files; data.download=true fetches them here
    download: bool = False
    batch_size: int = 256


class IDXError(DataError):
    """A file that is not a well-formed IDX file."""


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not): magic 0x0000 <type> <ndim>, big-endian dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise IDXError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{path}: the header promises {ndim} dimensions but the file ends at byte {len(raw)}.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IDXError(f"{path}: the header says {dims} values ({expected} bytes) but the file holds "
                       f"{len(raw) - header} bytes after the header: it is truncated or corrupted.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def download(root: Path, base_url: str = BASE_URL, files: Dict[str, str] = FILES) -> None:
    """Fetch the missing files into ``root`` with progress lines, verifying each MD5."""
    for name, md5 in files.items():
        fetch(base_url + name, Path(root) / name, md5)


def load(cfg: DictConfig, seed: int) -> Dataset:
    root = Path(cfg.root)
    if cfg.download:
        download(root)
    missing = [name for name in FILES if not (root / name).exists()]
    if missing:
        raise ConfigError(f"data.root={cfg.root}: missing {', '.join(missing)}. Put the four Fashion-MNIST "
                          f"IDX files there, or add data.download=true to fetch them.")
    try:
        arrays = {name: read_idx(root / name) for name in FILES}
    except IDXError as e:
        raise DataError(f"data.root={cfg.root}: {e}") from None
    images = lambda a: torch.tensor(a.reshape(len(a), -1), dtype=torch.float32) / 255.0  # noqa: E731
    labels = lambda a: torch.tensor(a.astype(np.int64))  # noqa: E731
    names = list(FILES)
    return Dataset(images(arrays[names[0]]), labels(arrays[names[1]]), images(arrays[names[2]]),
                   labels(arrays[names[3]]), "classification", cfg.batch_size, 10)
