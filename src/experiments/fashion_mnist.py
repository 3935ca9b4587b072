"""Fashion-MNIST from its four standard IDX files, optionally downloaded and checksummed."""

from __future__ import annotations

import gzip
import hashlib
import logging
import struct
import urllib.request
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from omegaconf import DictConfig

from .config import ConfigError

log = logging.getLogger(__name__)

BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {  # the official files and their MD5 sums (as torchvision and the dataset's authors list them)
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class IDXError(ValueError):
    pass


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


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(root: Path, base_url: str = BASE_URL, files: Dict[str, str] = FILES) -> None:
    """Fetch the missing files into ``root`` with progress lines, verifying each MD5."""
    root.mkdir(parents=True, exist_ok=True)
    for name, checksum in files.items():
        target = root / name
        if target.exists() and md5(target) == checksum:
            continue
        tmp = target.with_suffix(".part")
        log.info("downloading %s%s", base_url, name)
        with urllib.request.urlopen(base_url + name, timeout=60) as response, open(tmp, "wb") as out:
            total, done, shown = int(response.headers.get("Content-Length") or 0), 0, -1
            for chunk in iter(lambda: response.read(1 << 16), b""):
                out.write(chunk)
                done += len(chunk)
                percent = 100 * done // total if total else -1
                if percent // 10 > shown // 10:
                    log.info("  %s: %d%% of %.1f MB", name, percent, total / 1e6)
                    shown = percent
        if md5(tmp) != checksum:
            tmp.unlink()
            raise ConfigError(f"data.download: {name} from {base_url} does not match its MD5 {checksum}; "
                              f"the download is corrupted or the mirror changed.")
        tmp.replace(target)


def load_fashion_mnist(cfg: DictConfig):
    from .data import Dataset

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
        raise ConfigError(f"data.root={cfg.root}: {e}") from None
    images = lambda a: torch.tensor(a.reshape(len(a), -1), dtype=torch.float32) / 255.0  # noqa: E731
    labels = lambda a: torch.tensor(a.astype(np.int64))  # noqa: E731
    names = list(FILES)
    return Dataset(images(arrays[names[0]]), labels(arrays[names[1]]), images(arrays[names[2]]),
                   labels(arrays[names[3]]), "classification", cfg.batch_size, 10)
