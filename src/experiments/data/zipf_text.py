"""A seeded synthetic language with Zipfian word frequencies and learnable structure; no download.

    python train.py data=zipf_text model=tied_lm

Tokens ``0 … V-1`` have unigram probabilities ``π_k ∝ 1 / (k+1)^exponent`` (Zipf's law: token 0 is
the most frequent). The text is a Markov chain: the next token is drawn from a successor table ``S``
with probability ``structure`` and from the unigram ``π`` otherwise, ``P = structure·S + (1-structure)·π``.

The successor table is the mean of ``successors`` random *couplings* of ``π`` with itself: lay the
tokens' probabilities end to end on [0, 1) in two random orders; a token is followed by the tokens
whose intervals overlap its own, in proportion to the overlap. So a rare token has ``successors``
likely successors (one per coupling) and a frequent one spreads over more, and every coupling
keeps ``π`` stationary (``π S = π``): the unigram frequencies of the text are exactly Zipf's.

What a model can reach: the unigram entropy ``H(π)`` is the loss of the best model that ignores the
context; the generator's cross-entropy ``Σ_i π_i H(P_i)`` (its entropy rate) is the floor no model
beats in expectation. Both are logged when the data is loaded (in nats, and as perplexities).
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass
from typing import Tuple

import torch
from omegaconf import DictConfig
from torch.special import xlogy

from ..errors import ConfigError
from ..memory import check_fits
from .dataset import Dataset
from .windows import TokenConfig, check_context, windows

log = logging.getLogger(__name__)


@dataclass
class Config(TokenConfig):
    _target_: str = "experiments.data.zipf_text.load"
    name: str = "zipf_text"
    vocab: int = 1000  # V: the number of distinct tokens
    exponent: float = 1.1  # Zipf's exponent: π_k ∝ 1 / (k+1)^exponent
    successors: int = 3  # the likely successors of a rare token (frequent tokens have more)
    structure: float = 0.9  # the weight of the successor table; the rest of each step is drawn from π
    n_train: int = 20000  # training examples (= predicted tokens)
    n_val: int = 4000  # validation examples, from the continuation of the same text


class ZipfLanguage:
    """The generator: unigram ``π`` (float64, ``(V,)``), the successor table as sparse entries
    ``rows``, ``cols``, ``probs`` (``S[rows[e], cols[e]] = probs[e]``, each row summing to 1)."""

    def __init__(self, vocab: int, exponent: float, successors: int, structure: float, seed: int):
        self.vocab, self.structure = vocab, structure
        g = torch.Generator().manual_seed(seed)
        pi = torch.arange(1, vocab + 1, dtype=torch.float64).pow(-exponent)
        self.unigram = pi / pi.sum()
        rows, cols, mass = [], [], []
        for _ in range(successors):
            order_a, order_b = torch.randperm(vocab, generator=g), torch.randperm(vocab, generator=g)
            ends_a, ends_b = self.unigram[order_a].cumsum(0), self.unigram[order_b].cumsum(0)
            ends_a[-1] = ends_b[-1] = 1.0  # the same end, whatever the rounding
            cuts = torch.cat([ends_a, ends_b]).unique()  # sorted breakpoints in (0, 1]
            segments = torch.diff(torch.cat([torch.zeros(1, dtype=torch.float64), cuts]))
            mid = cuts - segments / 2
            keep = segments > 0
            rows.append(order_a[torch.searchsorted(ends_a, mid[keep]).clamp(max=vocab - 1)])
            cols.append(order_b[torch.searchsorted(ends_b, mid[keep]).clamp(max=vocab - 1)])
            mass.append(segments[keep])
        keys, where = (torch.cat(rows) * vocab + torch.cat(cols)).unique(return_inverse=True)  # sorted by row
        joint = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, where, torch.cat(mass)) / successors
        self.rows, self.cols = keys // vocab, keys % vocab  # the joint F(i, j) sums to π_i over a row
        self.probs = joint / self.unigram[self.rows]  # S(j | i) = F(i, j) / π_i
        if len(self.rows.unique()) < vocab:
            raise ConfigError(f"data.vocab={vocab}, data.exponent={exponent}: the rarest tokens' probabilities "
                              f"vanish in float64 arithmetic; use a smaller vocabulary or exponent.")

    def transition(self) -> torch.Tensor:
        """The dense ``V × V`` matrix ``P`` (for tests and small vocabularies)."""
        dense = torch.zeros(self.vocab, self.vocab, dtype=torch.float64)
        dense[self.rows, self.cols] = self.probs
        return self.structure * dense + (1 - self.structure) * self.unigram

    @property
    def unigram_entropy(self) -> float:
        """``H(π)`` in nats: the loss of the best model that ignores the context."""
        return float(-xlogy(self.unigram, self.unigram).sum())

    @property
    def entropy_rate(self) -> float:
        """``Σ_i π_i H(P_i)`` in nats: the generator's own cross-entropy, the floor of the loss."""
        background = (1 - self.structure) * self.unigram  # P_ij off the successor table
        h_background = float(-xlogy(background, background).sum())
        p = self.structure * self.probs + background[self.cols]  # P_ij on it
        correction = -xlogy(p, p) + xlogy(background[self.cols], background[self.cols])
        per_row = h_background + torch.zeros(self.vocab, dtype=torch.float64).index_add_(0, self.rows, correction)
        return float((self.unigram * per_row).sum())

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` tokens of the stationary chain (the first one drawn from ``π``), int64."""
        from_unigram = torch.multinomial(self.unigram, n, replacement=True, generator=generator).tolist()
        use_table = (torch.rand(n, generator=generator, dtype=torch.float64) < self.structure).tolist()
        u = torch.rand(n, generator=generator, dtype=torch.float64).tolist()
        starts = torch.searchsorted(self.rows, torch.arange(self.vocab + 1))  # entries are sorted by row
        running = torch.cat([torch.zeros(1, dtype=torch.float64), self.probs.cumsum(0)])
        cum = (running[1:] - running[starts[self.rows]]).tolist()  # each row's own cumulative distribution
        cols, starts = self.cols.tolist(), starts.tolist()
        tokens = [from_unigram[0]]
        for t in range(1, n):
            if use_table[t]:
                lo, hi = starts[tokens[-1]], starts[tokens[-1] + 1]
                tokens.append(cols[min(bisect.bisect_right(cum, u[t], lo, hi), hi - 1)])
            else:
                tokens.append(from_unigram[t])
        return torch.tensor(tokens, dtype=torch.int64)


# Lower bounds of the bytes each phase of load() takes, measured at data.vocab=200000 (table: 315 bytes per
# successor x token at its peak, of which rows, cols and probs keep 48; sampling: 85 bytes per token).
TABLE_PEAK, TABLE_KEPT, SAMPLE, TOKEN = 100, 48, 40, 8


def memory_needed(cfg: DictConfig) -> Tuple[int, str, str]:
    """The most memory a phase of :func:`load` needs (a lower bound), what it is, and the keys that size it."""
    table = cfg.successors * cfg.vocab
    n = cfg.n_train + cfg.n_val + 2 * cfg.context  # the text's tokens
    phases = [
        (TABLE_PEAK * table, f"the language's successor table ({cfg.successors} couplings of {cfg.vocab:,} tokens)",
         f"data.vocab={cfg.vocab}, data.successors={cfg.successors}"),
        (TABLE_KEPT * table + SAMPLE * n, f"sampling its text of {n:,} tokens",
         f"data.n_train={cfg.n_train}, data.n_val={cfg.n_val}, data.context={cfg.context}"),
        (TABLE_KEPT * table + TOKEN * (cfg.n_train + cfg.n_val) * cfg.context + 2 * TOKEN * n,
         f"its {cfg.n_train + cfg.n_val:,} windows of {cfg.context:,} tokens",
         f"data.context={cfg.context}, data.n_train={cfg.n_train}, data.n_val={cfg.n_val}"),
    ]
    return max(phases)


def language(cfg: DictConfig, seed: int) -> ZipfLanguage:
    """The generator ``cfg`` (the ``data`` node) describes, after checking its keys."""
    if cfg.vocab < 2:
        raise ConfigError(f"data.vocab={cfg.vocab}: a language needs at least 2 tokens.")
    if cfg.exponent < 0:
        raise ConfigError(f"data.exponent={cfg.exponent}: Zipf's exponent cannot be negative (0 gives uniform "
                          f"frequencies, about 1 is natural language).")
    if cfg.successors < 1:
        raise ConfigError(f"data.successors={cfg.successors}: every token needs at least 1 successor.")
    if cfg.successors > cfg.vocab:  # one coupling per likely successor: more than the tokens cannot be
        raise ConfigError(f"data.successors={cfg.successors}: more than the data.vocab={cfg.vocab} tokens; a token "
                          f"has at most {cfg.vocab} likely successors.")
    if not 0 <= cfg.structure <= 1:
        raise ConfigError(f"data.structure={cfg.structure}: a probability, between 0 (no structure: every "
                          f"token drawn from the unigram) and 1.")
    need, what, keys = memory_needed(cfg)
    check_fits(need, f"data=zipf_text: {what}", keys, "Use smaller values.")
    return ZipfLanguage(cfg.vocab, cfg.exponent, cfg.successors, cfg.structure, seed)


def load(cfg: DictConfig, seed: int) -> Dataset:
    check_context(cfg.context)
    lang = language(cfg, seed)
    n_first = cfg.n_train + cfg.context  # the training windows' tokens; validation continues the text
    stream = lang.sample(n_first + cfg.n_val + cfg.context, torch.Generator().manual_seed(seed + 1))
    train_x, train_y = windows(stream[:n_first], cfg.context, "data=zipf_text: the training text")
    val_x, val_y = windows(stream[n_first:], cfg.context, "data=zipf_text: the validation text")
    h1, h = lang.unigram_entropy, lang.entropy_rate
    log.info("zipf_text: %d tokens (Zipf exponent %g, %d successors, structure %g), %d + %d examples of "
             "context %d. Unigram entropy %.3f nats (perplexity %.1f): a model that ignores the context; the "
             "generator's cross-entropy %.3f nats (perplexity %.1f): the floor of loss/val.", cfg.vocab,
             cfg.exponent, cfg.successors, cfg.structure, cfg.n_train, cfg.n_val, cfg.context, h1, math.exp(h1),
             h, math.exp(h))
    return Dataset(train_x, train_y, val_x, val_y, "next_token", cfg.batch_size, cfg.vocab)
