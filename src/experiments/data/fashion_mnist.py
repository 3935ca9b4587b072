"""Fashion-MNIST from its four standard IDX files, optionally downloaded and checksummed.

    python train.py data=fashion_mnist data.download=true model=mlp model.width=256 optim=adam
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig

from ..errors import ConfigError, DataError
from .dataset import DataConfig, Dataset
from .download import fetch
from .files import folder_if_there, regular_file

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
    download: bool = False  # true: fetch the four files into data.root if they are not there
    url: str = BASE_URL  # where data.download fetches them from (a mirror: the same four files)
    download_timeout: float = 600.0  # seconds for the whole download of a file (a stall fails after 30 s)
    batch_size: int = 256


class IDXError(DataError):
    """A file that is not a well-formed IDX file."""


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not): magic 0x0000 <type> <ndim>, big-endian dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise IDXError(f"{path}: not a complete gzip file ({e}); delete it and download it again.") from None
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


def download(root: Path, base_url: str = BASE_URL, files: Dict[str, str] = FILES, deadline: float = 600.0) -> None:
    """Fetch the missing files into ``root`` with progress lines, verifying each MD5."""
    avoid = (f"put the four files into data.root={root} yourself and leave data.download=false (a slow server: "
             f"raise data.download_timeout; another mirror: data.url)")
    for name, md5 in files.items():
        fetch(base_url.rstrip("/") + "/" + name, Path(root) / name, md5, deadline=deadline, avoid=avoid)


def check_pair(images: np.ndarray, labels: np.ndarray, names: Tuple[str, str], root: str) -> None:
    """Images ``(n, rows, cols)`` and ``n`` labels in 0..9."""
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"data.root={root}: {names[0]} holds an array of shape {images.shape} and {names[1]} one "
                        f"of shape {labels.shape}; expected (n, 28, 28) images and n labels.")
    if len(images) != len(labels):
        raise DataError(f"data.root={root}: {names[0]} holds {len(images)} images but {names[1]} holds "
                        f"{len(labels)} labels; the files do not belong together.")
    if len(labels) and (labels.min() < 0 or labels.max() >= 10):
        bad = int(np.flatnonzero((labels < 0) | (labels >= 10))[0])
        raise DataError(f"data.root={root}: {names[1]} holds label {int(labels[bad])} at index {bad}; "
                        f"Fashion-MNIST has the classes 0 to 9.")


def load(cfg: DictConfig, seed: int) -> Dataset:
    root = folder_if_there(Path(cfg.root), "data.root")
    if not cfg.download_timeout > 0:
        raise ConfigError(f"data.download_timeout={cfg.download_timeout}: seconds, more than 0.")
    for name in FILES:  # before anything reads them: a named pipe would hang the checksum
        if (root / name).exists() or (root / name).is_symlink():
            regular_file(root / name, "data.root", f"{cfg.root} ({root / name})", "Put the IDX file itself there.")
    if cfg.download:
        download(root, cfg.url, deadline=cfg.download_timeout)
    missing = [name for name in FILES if not (root / name).exists()]
    if missing:
        raise ConfigError(f"data.root={cfg.root}: missing {', '.join(missing)}. Put the four Fashion-MNIST "
                          f"IDX files there, or add data.download=true to fetch them.")
    try:
        arrays = {name: read_idx(root / name) for name in FILES}
    except IDXError as e:
        raise DataError(f"data.root={cfg.root}: {e}") from None
    names = list(FILES)
    check_pair(arrays[names[0]], arrays[names[1]], (names[0], names[1]), cfg.root)
    check_pair(arrays[names[2]], arrays[names[3]], (names[2], names[3]), cfg.root)
    images = lambda a: torch.tensor(a.reshape(len(a), -1), dtype=torch.float32) / 255.0  # noqa: E731
    labels = lambda a: torch.tensor(a.astype(np.int64))  # noqa: E731
    return Dataset(images(arrays[names[0]]), labels(arrays[names[1]]), images(arrays[names[2]]),
                   labels(arrays[names[3]]), "classification", cfg.batch_size, 10)
