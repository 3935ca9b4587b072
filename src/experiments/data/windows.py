"""Next-token examples: windows of a token stream, and the keys every token source has.

A stream ``t_0 t_1 ... t_{T-1}`` of token ids gives ``T - context`` examples: input
``x[i] = t_i ... t_{i+context-1}`` (int64, shape ``(n, context)``) and target the next token
``y[i] = t_{i+context}`` (int64, shape ``(n,)``). Consecutive windows overlap by ``context - 1``
tokens: ``x[i, 1:] == x[i+1, :-1]`` and ``y[i] == x[i+1, -1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..errors import ConfigError, DataError
from ..memory import check_fits
from .dataset import DataConfig


@dataclass
class TokenConfig(DataConfig):
    """The keys of a ``next_token`` source: the model reads ``data.context`` tokens and predicts one
    of ``data.num_outputs`` (the vocabulary; None: from the data, which is how the models pick it up)."""

    task: str = "next_token"
    num_outputs: Optional[int] = None
    context: int = 8  # tokens the model sees before the one it predicts
    batch_size: int = 64


def check_context(context: int) -> None:
    if context < 1:
        raise ConfigError(f"data.context={context}: the model must see at least 1 token before the one it "
                          f"predicts; use data.context=1 or more.")


def windows(stream: torch.Tensor, context: int, where: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every window of ``context`` tokens of ``stream`` with the token after it. ``where`` names the
    stream in the error raised when it is too short for one window and its target."""
    check_context(context)
    count = len(stream) - context
    check_fits(count * context * stream.element_size(), f"{where}: {count:,} windows of {context:,} tokens",
               f"data.context={context}", "Use a smaller data.context.")
    if len(stream) < context + 1:
        raise DataError(f"{where} has {len(stream)} tokens, fewer than one window of data.context={context} "
                        f"tokens plus the token to predict ({context + 1}). Use a longer text or a smaller "
                        f"data.context.")
    x = stream[:-1].unfold(0, context, 1).contiguous()
    return x, stream[context:].clone()
