"""The ``tied`` signal: each use's own gradient of a tied parameter, next to their sum.

The per-call views that split a gradient into its uses are ``experiments.uses.UseViews``
(shared with the ``model.grad_scale`` intervention); this signal switches their capture on for
the steps it logs and turns what they caught into tags: the summed gradient's norm, each use's
norm and cosine with the sum, the cancellation, and for a parameter with an embedding use the
fraction of rows each use touches. It checks that the uses add up to ``.grad``.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, List

import torch
from torch import nn

from ..errors import TieGradientMismatch
from ..tying import TieGroup
from ..uses import UseViews
from . import tags
from .protos import custom_scalars
from .signals import Signal, Watched
from .use_runs import labels_summary, run_layout


def use_statistics(name: str, param: nn.Parameter, uses: Dict[str, torch.Tensor], rows: bool = False):
    """Tags and a 1-D device tensor (a value per tag) for one tied parameter, plus the sum
    check as (error, tolerance).

    ``grad_norm`` is the norm of the summed gradient (``.grad``) and of each use's; ``cos`` is each use's cosine with the summed gradient (``.grad``); ``cancellation`` is
    ||sum of uses|| / sum of ||use|| (1 when the uses agree, near 0 when they cancel); with
    ``rows``, ``rows_touched`` is the fraction of rows (first dimension) a use's gradient is
    non-zero in: an embedding's input use touches only the batch's tokens.
    """
    aliases = list(uses)
    stacked = torch.stack([uses[a].reshape(-1) for a in aliases]).float()
    total = param.grad.reshape(-1).float()
    norms = torch.linalg.vector_norm(stacked, dim=1)
    total_norm = torch.linalg.vector_norm(total)
    cos = (stacked @ total) / (norms * total_norm).clamp_min(1e-30)
    summed, norm_sum = stacked.sum(0), norms.sum()
    cancellation = torch.linalg.vector_norm(summed) / norm_sum.clamp_min(1e-30)
    error = torch.linalg.vector_norm(summed - total)
    tolerance = 1e-5 * stacked.shape[0] * (norm_sum + 1e-12)
    names = [tags.use_stat(name, a, "grad_norm") for a in aliases] + [tags.use_stat(name, a, "cos") for a in aliases]
    names += [tags.tied_grad_norm(name), tags.cancellation(name)]
    parts = [norms, cos, total_norm.reshape(1), cancellation.reshape(1)]
    if rows:
        names += [tags.use_stat(name, a, "rows_touched") for a in aliases]
        parts.append(torch.stack([(uses[a].reshape(uses[a].shape[0], -1) != 0).any(dim=1).float().mean()
                                  for a in aliases]))
    return names, torch.cat(parts), (error, tolerance)  # one value per tag, one tensor


def mismatch(name: str, uses: List[str], error: float, tolerance: float) -> TieGradientMismatch:
    return TieGradientMismatch(
        f"the per-use gradients of tied parameter '{name}' ({', '.join(uses)}) do not add up to its "
        f".grad: they differ by {error:.3g} (tolerance {tolerance:.3g}). A module that reads its "
        f"parameter other than as an attribute, a hook that edits gradients, or gradients accumulated "
        f"over several backward passes without zero_grad can cause this."
    )


def tied_layout(groups: List[TieGroup]) -> Dict[str, Dict[str, list]]:
    """Custom-scalars layout: for each tied parameter, the sum's and each use's gradient norm, tags of
    this run (one run per job: see ``use_runs`` for why, and for the per-use view in colour)."""
    return run_layout(g.canonical for g in groups)


class Tied(Signal):
    """``tied/<param>/...``: the summed gradient of each tied parameter, each use's own
    gradient and its cosine with the sum, and the cancellation; checks that the uses add up."""

    name = "tied"

    @classmethod
    def applies(cls, watched: Watched) -> bool:
        return bool(watched.groups)

    def __init__(self, watched: Watched):
        super().__init__(watched)
        self.uses = watched.uses or UseViews(watched.model, watched.groups)
        embedded = {id(p) for m in watched.model.modules() if isinstance(m, nn.Embedding)
                    for p in m.parameters(recurse=False)}
        self._rows = {g.canonical for g in watched.groups if id(g.param) in embedded}
        watched.events.write_summary(custom_scalars(tied_layout(watched.groups)))
        watched.events.write_summary(labels_summary(watched.model, watched.groups))  # the Text tab's uses

    def before_forward(self, step) -> None:
        self.uses.start_capture()

    def after_backward(self, step, record) -> None:
        self.uses.stop_capture(keep_hooks=self.cadence == 1)
        for group in self.watched.groups:
            if group.param.grad is None:
                continue
            uses = self.uses.ordered(group)
            if not uses:  # nothing caught (no forward pass since the capture began): the sum alone
                record.add(tags.tied_grad_norm(group.canonical), torch.linalg.vector_norm(group.param.grad))
                continue
            names, values, (error, tolerance) = use_statistics(group.canonical, group.param, uses,
                                                               rows=group.canonical in self._rows)
            record.extend(names, values)
            record.check(error, tolerance, partial(mismatch, group.canonical, list(uses)))

    def close(self) -> None:
        self.uses.stop_capture()
