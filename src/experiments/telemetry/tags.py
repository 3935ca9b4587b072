"""Every TensorBoard tag the project writes, built and parsed in one place.

The tags are a contract: dashboards, the report and users' own scripts read them. Signals
build their tags with these functions; the report reads tags back with :func:`parse`.

- ``loss/train``, ``loss/train_epoch``, ``loss/val``, ``acc/train``, ``acc/val``, ``ppl/val``
- ``param_norm/<param>``, ``grad_norm/<param>``, ``grad_norm/total``, ``update_ratio/<param>``
- ``param/<param>``, ``grad/<param>`` (histograms)
- ``tied/<param>/grad_norm`` (the gradient autograd sums over the uses),
  ``tied/<param>/use/<use>/grad_norm``, ``.../cos`` and, for a parameter with an embedding use,
  ``.../rows_touched`` (each use), ``tied/<param>/cancellation``
- ``act/<layer>/mean``, ``act/<layer>/std``, ``act/<layer>/dead_frac``

``<param>`` is a name as ``named_parameters()`` gives it (``2.weight``), ``<use>`` the name of
one use of a shared parameter, after where it happened (``4.weight``, ``block#1.weight``,
``wte.weight@GPT``: ``experiments.uses`` names them), ``<layer>`` a module name.
Module names never contain ``.`` inside a part and, in practice, never ``/``: that is what
makes a tag parse back unambiguously.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

LOSS_TRAIN = "loss/train"  # the training loss: the mean of the batch losses since the previous point
LOSS_VAL = "loss/val"  # the validation loss, at the end of each epoch
LOSS_TRAIN_EPOCH = "loss/train_epoch"  # the mean training loss over the epoch, at its last step
ACC_TRAIN = "acc/train"  # classification: the accuracy of the batches since the previous point
ACC_VAL = "acc/val"  # classification: the validation accuracy, at the end of each epoch
PPL_VAL = "ppl/val"  # next-token data: the validation perplexity, exp(loss/val)
GRAD_NORM_TOTAL = "grad_norm/total"  # the norm of all gradients together (before clipping)
USE_ROLES = "uses"  # text: each shared parameter's uses and their roles (input/output, t-k, depth k)
PER_PARAMETER = ("param_norm", "grad_norm", "update_ratio", "param", "grad")  # <signal>/<param>


def param_norm(param: str) -> str:
    """The L2 norm of a unique parameter (``<param>`` as ``named_parameters()`` names it)."""
    return f"param_norm/{param}"


def grad_norm(param: str) -> str:
    """The L2 norm of a parameter's gradient (for a tied one: the sum over its uses, ``.grad``)."""
    return f"grad_norm/{param}"


def update_ratio(param: str) -> str:
    """``‖w_after − w_before‖ / ‖w_before‖`` of one optimizer step."""
    return f"update_ratio/{param}"


def param_histogram(param: str) -> str:
    """A histogram of a parameter's values."""
    return f"param/{param}"


def grad_histogram(param: str) -> str:
    """A histogram of a parameter's gradient."""
    return f"grad/{param}"


def tied_grad_norm(param: str) -> str:
    """The norm of the gradient autograd sums over a tied parameter's uses (its ``.grad``)."""
    return f"tied/{param}/grad_norm"


USE_STATS = ("grad_norm", "cos", "rows_touched")


def use_stat(param: str, use: str, stat: str) -> str:
    """One use's own gradient: ``grad_norm`` (its norm), ``cos`` (its cosine with the summed gradient; NaN
    when either is exactly zero: undefined),
    ``rows_touched`` (for a parameter with an embedding use: the fraction of rows the use's gradient
    touches; the input use touches the batch's tokens, the output use every row). ``<use>`` names that
    use after where it happened (``5.weight``; for the unrolled cell, ``1.t3.weight_ih``; a module's
    second call ``block#1.weight``; a weight read by another module ``wte.weight@GPT``)."""
    return f"tied/{param}/use/{use}/{stat}"


def cancellation(param: str) -> str:
    """``‖Σ g_use‖ / Σ ‖g_use‖``: 1 when a tied parameter's uses agree, near 0 when they cancel (NaN when
    every use's gradient is zero)."""
    return f"tied/{param}/cancellation"


def activation(layer: str, stat: str) -> str:
    """A layer's output statistics over the batch (a tied layer once per use): ``mean``, ``std`` or
    ``dead_frac`` (after a ReLU, the fraction of units that are zero for every example of the batch)."""
    return f"act/{layer}/{stat}"


@dataclass(frozen=True)
class Tag:
    """A tag read back: ``tied/2.weight/use/4.weight/cos`` is
    ``Tag(kind="tied", name="2.weight", use="4.weight", stat="cos")``."""

    kind: str  # loss, acc, param_norm, grad_norm, update_ratio, param, grad, tied, act
    name: str  # the parameter or layer ("train"/"val" for loss and acc)
    stat: str = ""  # tied: grad_norm, cos or cancellation; act: mean, std or dead_frac
    use: Optional[str] = None  # tied: the use, for per-use tags


def parse(tag: str) -> Optional[Tag]:
    """The parts of one of our tags; None for a tag we do not write."""
    kind, _, rest = tag.partition("/")
    if not rest:
        return None
    if kind in ("loss", "acc", "ppl") or kind in PER_PARAMETER:
        return Tag(kind, rest)
    if kind == "act":
        layer, _, stat = rest.rpartition("/")
        return Tag(kind, layer, stat) if layer else None
    if kind == "tied":
        name, _, tail = rest.partition("/")
        if tail in ("grad_norm", "cancellation"):
            return Tag(kind, name, tail)
        use_part, _, stat = tail.rpartition("/")
        if use_part.startswith("use/") and stat in USE_STATS:
            return Tag(kind, name, stat, use_part[len("use/"):])
    return None
