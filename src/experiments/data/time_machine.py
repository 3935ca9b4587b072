"""D2L's "The Time Machine" (H. G. Wells) from the book's own data server, SHA-1 checked.

    python train.py data=time_machine data.download=true model=rnn

The file is ``timemachine.txt`` in ``data.root``; ``data.download=true`` fetches it there from the
book's ``DATA_HUB`` location (nothing is downloaded otherwise). It is tokenized like ``data=text``
(see :mod:`.text`): characters by default, as in the book (a vocabulary of 28: ``<unk>``, the space
and 26 letters), or ``data.tokens=word`` with ``data.min_freq``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from ..errors import DataError
from .dataset import Dataset
from .download import checksum, fetch
from .files import folder_if_there, regular_file
from .text import TextConfig, check_keys, read_text, token_dataset

log = logging.getLogger(__name__)

DATA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/"  # the book's d2l.DATA_URL
FILE = "timemachine.txt"
SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"  # the book's DATA_HUB['time_machine']


@dataclass
class Config(TextConfig):
    _target_: str = "experiments.data.time_machine.load"
    name: str = "time_machine"
    root: str = "data/time_machine"  # where timemachine.txt is (or is downloaded to)
    download: bool = False  # true: fetch it from the book's data server if it is not there


def download(root: Path, url: Optional[str] = None, sha1: Optional[str] = None) -> Path:
    """Fetch the text into ``root`` (unless a file with the right SHA-1 is there); a failure is a
    :class:`DataError` that says how to do without the network."""
    import http.client

    url, sha1 = url or DATA_URL + FILE, sha1 or SHA1
    try:
        return fetch(url, Path(root) / FILE, sha1, algorithm="sha1")
    except (OSError, http.client.HTTPException, DataError) as e:
        if isinstance(e, DataError):  # the checksum (nothing unverified is kept)
            what = str(e).rstrip(".")
        else:  # no network, refused, timed out: urllib's URLError wraps the socket error
            what = f"data.download=true: could not fetch {url}: {getattr(e, 'reason', None) or e}"
        raise DataError(f"data=time_machine: {what}. To do without the download, copy {FILE} (SHA-1 {sha1}) "
                        f"into data.root={root} yourself and leave out data.download=true.") from None


def load(cfg: DictConfig, seed: int) -> Dataset:
    check_keys(cfg)
    root = folder_if_there(Path(cfg.root), "data.root")
    path = root / FILE
    if path.exists() or path.is_symlink():  # before anything reads it: a named pipe would hang the checksum
        regular_file(path, "data.root", f"{cfg.root} ({path})", f"Put the book's {FILE} itself there.")
    if cfg.download:
        download(root, DATA_URL + FILE, SHA1)
    elif not path.exists():
        raise DataError(f"data.root={cfg.root}: no {FILE} there. Add data.download=true to fetch it from the "
                        f"book's data server ({DATA_URL + FILE}, SHA-1 checked), or copy it into data.root.")
    elif checksum(path, "sha1") != SHA1:
        log.warning("%s is not the book's file (its SHA-1 is not %s); using it as it is", path, SHA1)
    where = f"data=time_machine: {path}"
    return token_dataset(read_text(path, where), cfg, where)[0]
