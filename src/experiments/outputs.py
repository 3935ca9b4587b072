"""What a model's output means to the data's task: one rule, used by training, evaluation and the metrics.

1. **The logits.** A tensor is used as it is; an object or mapping with ``logits`` (a Hugging Face
   ``ModelOutput``) gives its ``.logits``; a tuple or list gives its first element.
2. **Per-position logits.** For the ``next_token`` task a model may return logits at every position
   of the window, ``(batch, context, vocab)`` (a causal LM such as GPT-2, a masked LM such as
   ALBERT). Only the last position is scored: its prediction of the token after the window, the
   one target the data gives and every other model predicts. Training and evaluation score the
   same position, so ``loss/train``, ``loss/val``, ``acc/*`` and ``ppl/val`` compare across models.
   (Not every position: a bidirectional model sees token ``i + 1`` at position ``i``, so scoring
   position ``i`` against it would reward copying; and with windows that overlap by ``context - 1``
   tokens every token of the text is the last-position target of one window anyway.)
3. **The shape the task needs.** ``classification`` and ``next_token``: ``(batch, num_outputs)``
   float logits; ``regression``: the shape of the targets, ``(batch, num_outputs)``. Anything else is a
   :class:`ConfigError` naming the shape it got and what the task expects, raised when the model is
   built (on a sample batch), before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch

from .errors import ConfigError


def logits(output: Any) -> Optional[torch.Tensor]:
    """Rule 1: the tensor in ``output`` that holds the predictions (None: there is none)."""
    if isinstance(output, torch.Tensor):
        return output
    found = getattr(output, "logits", None)
    if found is None and isinstance(output, Mapping):
        found = output.get("logits")
    if found is None and isinstance(output, (tuple, list)) and output:
        found = output[0]
    return found if isinstance(found, torch.Tensor) else None


def predictions(output: Any, task: str) -> torch.Tensor:
    """Rules 1 and 2, on every step (checked once by :func:`check_output` when the model is built)."""
    out = output if isinstance(output, torch.Tensor) else logits(output)
    if task == "next_token" and out.dim() == 3:
        return out[:, -1]  # the prediction of the token after the window
    return out


def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def check_output(output: Any, x: torch.Tensor, y: torch.Tensor, task: str, num_outputs: int, where: str) -> None:
    """Rule 3 on the model's ``output`` for the sample batch ``x`` (targets ``y``). ``where`` names
    the model and data for the message (``model=hf_gpt2 on data=zipf_text``)."""
    out = logits(output)
    if out is None:
        raise ConfigError(
            f"{where}: the model returned a {type(output).__module__}.{type(output).__qualname__}, which holds no "
            f"tensor of predictions. A model's output is used when it is a tensor, has .logits (a Hugging Face "
            f"ModelOutput) or is a tuple whose first element is the tensor; return one of these.")
    batch = x.shape[0]
    if task == "regression":
        expected = [tuple(y.shape)]
        what = f"{_shape(expected[0])}: one value per target (data.num_outputs={num_outputs})"
    else:
        expected = [(batch, num_outputs)]
        if task == "next_token":
            expected.append((batch, x.shape[1], num_outputs))
            what = (f"(batch, {num_outputs}): the next token's logits over data.num_outputs={num_outputs} tokens, or "
                    f"(batch, {x.shape[1]}, {num_outputs}): logits at each of the data.context={x.shape[1]} positions "
                    f"(the last one is scored)")
        else:
            what = f"(batch, {num_outputs}): one logit per class (data.num_outputs={num_outputs})"
    if tuple(out.shape) not in expected or not out.is_floating_point():
        dtype = "" if out.is_floating_point() else f" {out.dtype} (not floating-point)"
        raise ConfigError(
            f"{where}: the model's output{'' if out is output else ' (its logits)'} has shape {_shape(out.shape)}"
            f"{dtype} for a batch of {batch}, which the {task} task cannot score; it expects {what}. Size the "
            f"model's last layer (or its vocabulary) from the data, e.g. vocab_size: ${{data.num_outputs}}.")
