"""The ``tied`` signal: each use's own gradient of a tied parameter, next to their sum.

The per-call views that split a gradient into its uses are ``experiments.uses.UseViews``
(shared with the ``model.grad_scale`` intervention); this signal switches their capture on for
the steps it logs and turns what they caught into tags: the summed gradient's norm, each use's
norm and cosine with the sum, the cancellation, and for a parameter with an embedding use the
fraction of rows each use touches. It checks that the uses add up to ``.grad``.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Dict, List

import torch
from torch import nn

from ..errors import TieGradientMismatch
from ..tying import TieGroup
from ..use_roles import roles, roles_markdown
from ..uses import UseViews
from . import tags
from .protos import custom_scalars, text
from .signals import Signal, Watched


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


def use_roles(model: nn.Module, groups: List[TieGroup]) -> Dict[str, Dict[str, str]]:
    """Each tied parameter's uses -> their roles (``experiments.use_roles``): a use whose module is an
    ``nn.Embedding`` is the input side of an embedding tie."""
    def is_embedding(alias: str) -> bool:
        try:
            return isinstance(model.get_submodule(alias.rpartition(".")[0].partition("#")[0]), nn.Embedding)
        except AttributeError:  # a name that is no module path
            return False

    return {g.canonical: roles(g.aliases, {a for a in g.aliases if is_embedding(a)}) for g in groups}


USES_DIR = "uses"  # each use's sub-run: <run>/uses/<module of the use>


def use_run(alias: str) -> str:
    """The sub-run that draws a use's line: ``4.weight`` -> ``uses/4`` (the module of that use)."""
    return f"{USES_DIR}/{alias.rpartition('.')[0] or alias}"


def tied_layout(groups: List[TieGroup]) -> Dict[str, Dict[str, list]]:
    """Custom-scalars layout: one chart per tied parameter. Its one tag, ``tied/<name>/grad_norm``,
    is the sum in the run itself and each use's own gradient norm in the use's sub-run, so
    TensorBoard draws the sum and every use each in its own colour (it colours by run)."""
    charts = {}
    for g in groups:
        uses = ", ".join(use_run(a) for a in g.aliases)
        title = f"{g.canonical}: gradient norm, the sum (this run) and each use (runs {uses})"
        charts[title] = ["Multiline", [re.escape(tags.tied_grad_norm(g.canonical)) + "$"]]
    return {"tied parameters": charts}


class Tied(Signal):
    """``tied/<param>/...``: the summed gradient of each tied parameter, each use's own
    gradient and its cosine with the sum, and the cancellation; checks that the uses add up. Writes
    each use's role once, as the text ``use_roles``."""

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
        watched.events.write_summary(text(tags.USE_ROLES, roles_markdown(use_roles(watched.model, watched.groups))))

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
            for i, alias in enumerate(uses):  # each use's norm again, in its use's sub-run (one colour each)
                record.add(tags.tied_grad_norm(group.canonical), values[i], self.watched.sub_run(use_run(alias)))

    def close(self) -> None:
        self.uses.stop_capture()
