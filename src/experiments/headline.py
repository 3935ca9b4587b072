"""The headline of a report: what each job found about its tied parameters, as numbers.

Each quantity is given at step 1 (the initial state: every signal logs step 1), as the median over
the steps the per-use gradients were logged, and at the end (the last logged step). Uses are named
by their roles (``experiments.use_roles``):

- an **embedding tie** (uses *input* and *output*): each use's share of the uses' gradient norms,
  ``‖g_use‖ / Σ ‖g_u‖``, and ``output / input``, the output use's gradient norm over the input use's;
- a **cell unrolled in time** (uses ``t-0`` … ``t-k``): ``t-k / t-0``, the gradient of the time step
  farthest from the loss over that of the step next to it (below 1: vanishing, above 1: exploding),
  for the cell's input weights (``weight_ih``: its gradient at a step is the error reaching that step
  times an input of the same scale at every step; ``weight_hh``'s first step multiplies a hidden
  state of zeros);
- a **block shared across depth** (uses ``depth 1`` … ``depth n``): the spread of the per-depth
  gradient norms, ``largest / smallest``, and the cancellation ``‖Σ g_use‖ / Σ ‖g_use‖`` (1 when the
  depths agree), for the block's first weight.

Every parameter of an embedding tie is headlined; of a cell or a block, the one named above.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from . import use_roles
from .runs import Job, by_swept_value, varying_overrides
from .telemetry import tags


@dataclass
class Line:
    """One quantity of one job's tied parameter: at step 1, its median over training, at the end."""

    job: str  # the job's folder, relative to the report's
    label: str  # what the job's overrides vary ("" for a single run)
    param: str
    kind: str  # embedding | time | depth
    quantity: str  # "share of input", "output / input", "t-7 / t-0", "largest / smallest", "cancellation"
    first_step: int
    at_start: float
    median: float
    last_step: int
    at_end: float


EXPLAINED = {
    use_roles.EMBEDDING: "**Embedding tie**: each use's share of the uses' gradient norms (‖g_use‖ / Σ ‖g_u‖) and "
                         "the output use's gradient norm over the input use's.",
    use_roles.TIME: "**Gradient through time**: the gradient norm of the cell's use farthest from the loss (t-k) "
                    "over that of the use next to it (t-0); below 1 the gradient vanishes through time, above 1 "
                    "it explodes.",
    use_roles.DEPTH: "**Block shared across depth**: the spread of the per-depth gradient norms (largest / "
                     "smallest) and the cancellation ‖Σ g_use‖ / Σ ‖g_use‖ (1 when the depths agree).",
}


def _headlined(job: Job) -> List[Tuple[str, str]]:
    """(parameter, kind) of the tied parameters this job's headline shows."""
    by_kind: Dict[str, List[str]] = {}
    for name in job.tied():
        uses = job.use_roles(name)
        if len(uses) < 2:
            continue
        kind = use_roles.kind_of_roles(list(uses.values()))
        by_kind.setdefault(kind, []).append(name)
    chosen = [(n, use_roles.EMBEDDING) for n in by_kind.get(use_roles.EMBEDDING, [])]
    time = by_kind.get(use_roles.TIME, [])
    if time:
        chosen.append((next((n for n in time if n.endswith("weight_ih")), time[0]), use_roles.TIME))
    depth = by_kind.get(use_roles.DEPTH, [])
    if depth:  # the weight whose depths differ most at the first step (ALBERT: a query, not a LayerNorm)
        weights = [n for n in depth if n.endswith("weight")] or depth
        chosen.append((max(weights, key=lambda n: _first_spread(job, n)), use_roles.DEPTH))
    return chosen


def _first_spread(job: Job, name: str) -> float:
    """Largest / smallest of the uses' gradient norms at the first step every use was logged (0: unknown)."""
    steps, out = _series(job, name, use_roles.DEPTH)
    first = out.get("largest / smallest", [])
    return first[0] if first and first[0] == first[0] else 0.0


def _series(job: Job, name: str, kind: str) -> Tuple[List[int], Dict[str, List[float]]]:
    """The steps where every use was logged, and each quantity's value at those steps."""
    roles = job.use_roles(name)
    curves = {role: {s: v for s, _, v in job.curves[tags.use_stat(name, use, "grad_norm")]}
              for use, role in roles.items()}
    steps = sorted(set.intersection(*(set(c) for c in curves.values())))
    norms = {role: [c[s] for s in steps] for role, c in curves.items()}
    out: Dict[str, List[float]] = {}
    if kind == use_roles.EMBEDDING:
        totals = [sum(vals) for vals in zip(*norms.values())]
        for role, vals in norms.items():
            out[f"share of {role}"] = [_div(v, t) for v, t in zip(vals, totals)]
        side = lambda which: [sum(v) for v in zip(*(vals for r, vals in norms.items() if r.startswith(which)))]  # noqa: E731
        out["output / input"] = [_div(o, i) for o, i in zip(side(use_roles.OUTPUT), side(use_roles.INPUT))]
    elif kind == use_roles.TIME:
        if "t-0" not in norms:  # the step next to the loss was not logged: nothing to compare with
            return steps, out
        far = max(norms, key=use_roles.distance)
        out[f"{far} / t-0"] = [_div(f, n) for f, n in zip(norms[far], norms["t-0"])]
    else:
        out["largest / smallest"] = [_div(max(vals), min(vals)) for vals in zip(*norms.values())]
        cancellation = {s: v for s, _, v in job.curves.get(tags.cancellation(name), [])}
        if all(s in cancellation for s in steps):
            out["cancellation"] = [cancellation[s] for s in steps]
    return steps, out


def _div(a: float, b: float) -> float:
    return a / b if b else (math.inf if a else math.nan)


def headline(jobs: Sequence[Job]) -> List[Line]:
    """The headline lines of these jobs, the jobs in the order of what the sweep varies."""
    ordered = by_swept_value(list(jobs))
    labels = dict(zip((j.name for j in jobs), (" ".join(o) for o in varying_overrides(list(jobs))[0])))
    lines = []
    for job in ordered:
        for name, kind in _headlined(job):
            steps, quantities = _series(job, name, kind)
            if not steps:
                continue
            for quantity, values in quantities.items():
                finite = [v for v in values if math.isfinite(v)]
                lines.append(Line(job.name, labels[job.name], name, kind, quantity, steps[0], values[0],
                                  statistics.median(finite) if finite else math.nan, steps[-1], values[-1]))
    return lines


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3g}"


def markdown(lines: List[Line], jobs: Sequence[Job]) -> Optional[str]:
    """The report's headline section (None when no job has a tied parameter with two uses)."""
    if not lines:
        return None
    kinds = list(dict.fromkeys(line.kind for line in lines))
    parts = [EXPLAINED[k] for k in kinds]
    parts.append("Each at step 1, as the median over the logged steps, and at the end (the last logged step):")
    rows = ["| job | parameter | quantity | step 1 | median | end |", "|---|---|---|---:|---:|---:|"]
    previous = (None, None)
    for line in lines:
        job = f"`{line.label or line.job}`" if line.job != previous[0] else ""
        param = f"`{line.param}`" if (line.job, line.param) != previous else ""
        previous = (line.job, line.param)
        rows.append(f"| {job} | {param} | {line.quantity} | {_number(line.at_start)} | "
                    f"{_number(line.median)} | {_number(line.at_end)} |")
    parts.append("\n".join(rows))
    without = [j for j in by_swept_value(list(jobs)) if j.name not in {line.job for line in lines}]
    if without:
        labels = dict(zip((j.name for j in jobs), (" ".join(o) for o in varying_overrides(list(jobs))[0])))
        parts.append("No tied parameter with per-use gradients in: "
                     + ", ".join(f"`{labels[j.name] or j.name}`" for j in without) + ".")
    return "\n\n".join(parts)


CSV_COLUMNS = ["job", "overrides", "parameter", "kind", "quantity", "first_step", "at_start", "median", "last_step",
               "at_end"]


def csv_text(lines: List[Line]) -> str:
    """``headline.csv``: one row per line, numbers at full precision."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for ln in lines:
        writer.writerow([ln.job, ln.label, ln.param, ln.kind, ln.quantity, ln.first_step, repr(ln.at_start),
                         repr(ln.median), ln.last_step, repr(ln.at_end)])
    return out.getvalue()
