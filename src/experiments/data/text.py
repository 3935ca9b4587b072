"""Any UTF-8 text file as next-token data, tokenized as in D2L's "Text Preprocessing" section.

    python train.py data=text data.path=my_book.txt data.tokens=word data.min_freq=3 model=tied_lm

The text is lower-cased and every run of non-letters becomes one space (the book keeps only
``A-Za-z``; here any Unicode letter counts). ``data.tokens=char`` makes each character (letters and
the space) a token; ``word`` splits on the spaces. The last ``data.val_fraction`` of the tokens is
the validation text (a contiguous split, as usual for language models: no validation window
overlaps a training one). The vocabulary is built from the training tokens: ``<unk>`` (id 0), then
every token seen at least ``data.min_freq`` times, most frequent first (ties in sorted order); rarer
tokens, and tokens seen only in the validation text, become ``<unk>``.
"""

from __future__ import annotations

import collections
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from omegaconf import MISSING, DictConfig

from ..errors import ConfigError, DataError
from .dataset import Dataset
from .files import regular_file
from .windows import TokenConfig, check_context, windows

log = logging.getLogger(__name__)

UNK = "<unk>"
TOKENS = ("char", "word")
_NON_LETTERS = re.compile(r"[\W\d_]+")  # everything but letters: \w minus digits and underscore


@dataclass
class TextConfig(TokenConfig):
    """The tokenization keys of a text source (``text`` and ``time_machine``)."""

    tokens: str = "char"  # char | word
    min_freq: int = 1  # tokens seen fewer times in the training text become <unk>
    val_fraction: float = 0.1  # the last part of the text


@dataclass
class Config(TextConfig):
    _target_: str = "experiments.data.text.load"
    name: str = "text"
    path: str = MISSING  # a UTF-8 text file


def check_keys(cfg: DictConfig) -> None:
    """The tokenization keys, checked before any file is read or fetched."""
    check_context(cfg.context)
    if cfg.tokens not in TOKENS:
        raise ConfigError(f"data.tokens={cfg.tokens!r}: must be one of {', '.join(TOKENS)}.")
    if cfg.min_freq < 1:
        raise ConfigError(f"data.min_freq={cfg.min_freq}: must be at least 1 (1 keeps every token of the "
                          f"training text; 2 or more maps rarer tokens to {UNK}).")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"data.val_fraction={cfg.val_fraction}: must be between 0 and 1.")


def tokenize(text: str, tokens: str) -> List[str]:
    """The book's preprocessing (lower case, non-letters to one space), then characters or words."""
    clean = _NON_LETTERS.sub(" ", text).lower()
    return list(clean) if tokens == "char" else clean.split()


def vocabulary(tokens: List[str], min_freq: int) -> List[str]:
    """``<unk>``, then the tokens seen at least ``min_freq`` times, most frequent first."""
    counts = collections.Counter(tokens)
    counts.pop(UNK, None)
    kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
    return [UNK] + kept


def read_text(path: Path, where: str) -> str:
    """The file's text; an empty file or one that is not UTF-8 is a :class:`DataError` naming ``where``."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text (byte {e.start} is {raw[e.start:e.start + 1]!r}). Convert "
                        f"it, e.g. iconv -f latin1 -t utf-8.") from None
    if not text.strip():
        raise DataError(f"{where}: the file is empty.")
    return text


def token_dataset(text: str, cfg: DictConfig, where: str) -> Tuple[Dataset, List[str]]:
    """Windows of ``text`` (tokenized, split and numbered as ``cfg`` says) and the vocabulary."""
    check_keys(cfg)
    if not _NON_LETTERS.sub("", text):
        raise DataError(f"{where}: the text has no letters, so no {cfg.tokens} tokens.")
    tokens = tokenize(text, cfg.tokens)
    n_val = max(1, round(len(tokens) * cfg.val_fraction))
    train_tokens = tokens[: len(tokens) - n_val]
    vocab = vocabulary(train_tokens, cfg.min_freq)
    index: Dict[str, int] = {t: i for i, t in enumerate(vocab)}
    stream = torch.tensor([index.get(t, 0) for t in tokens], dtype=torch.int64)
    what = f"{where} ({len(tokens)} {cfg.tokens} tokens)"
    train_x, train_y = windows(stream[: len(train_tokens)], cfg.context,
                               f"{what}: the training part")
    val_x, val_y = windows(stream[len(train_tokens):], cfg.context,
                           f"{what}: the validation part (data.val_fraction={cfg.val_fraction})")
    unk = float((stream == 0).double().mean())
    log.info("%s: %d %s tokens, vocabulary %d (min_freq %d; %.1f%% of tokens are %s), %d training and %d "
             "validation windows of %d tokens", where, len(tokens), cfg.tokens, len(vocab), cfg.min_freq,
             100 * unk, UNK, len(train_y), len(val_y), cfg.context)
    return Dataset(train_x, train_y, val_x, val_y, "next_token", cfg.batch_size, len(vocab)), vocab


def load(cfg: DictConfig, seed: int) -> Dataset:
    check_keys(cfg)
    path = regular_file(Path(cfg.path), "data.path", cfg.path, "data=text reads one UTF-8 text file: give its path.")
    where = f"data.path={path}"
    return token_dataset(read_text(path, where), cfg, where)[0]
