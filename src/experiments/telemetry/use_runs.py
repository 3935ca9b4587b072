"""Where each use of a tied parameter is drawn in TensorBoard, and under which label.

What TensorBoard 2.21 does (its source, tag 2.21.0): it colours lines by *run*, never by tag
(``tf_color_scale/colorScale.ts``; Custom Scalars names a line ``<tag> (<run>)`` and colours it by
the run, ``tf-custom-scalar-helpers.ts``), and its Scalars and Custom Scalars tabs start with every
run selected only while at most 40 runs match the run filter, else with none
(``tf-multi-checkbox.ts``: ``maxNamesToEnableByDefault = 40``); Time Series allows 500
(``runs_types.ts``: ``MAX_NUM_RUNS_TO_ENABLE_BY_DEFAULT``). A sub-run per use makes the three
experiment presets and a 4-job sweep (16 jobs) about 100 runs: the tabs open empty.

So the layout has two log directories:

- **the day's**: one run per job. Each use's values are tags of the job's own run
  (``tied/<param>/use/<use>/grad_norm``, ``.../cos``), charted per tied parameter in Custom
  Scalars (:func:`run_layout`); the Text tab's ``uses`` table names each use by its label.
- **the per-use view**, built on demand from those tags (:func:`write_view`,
  ``python scripts/uses_view.py <sweep or run folder>``): one run per use *label*
  (:func:`use_run`: ``sum``, ``input``, ``output``, ``t-0``, ``t-1``, ..., ``depth 1``, ...), whatever
  the number of jobs, and tags naming the parameter and the job (``<param> grad_norm/<job>``). A
  chart is one job's parameter with a line per use, each in its label's colour, the same in every
  chart (runs are ordered, so coloured, sum first, then by label).

Labels (:func:`use_labels`): ``input``/``output`` for an embedding tie (the Embedding's use and
the other one), ``t-k`` for a cell unrolled in time (k steps before the last, whose output the loss
reads), ``depth k`` for a module called at several positions of one container (the k-th), and
otherwise the use's own name.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import nn

from ..runs import find_runs
from ..use_roles import parse_roles_markdown, roles_markdown
from . import tags
from .events import EventFile
from .protos import custom_scalars


SUM = "sum"  # the per-use view's run of the summed gradient (.grad)
LABELS_TEXT = tags.USE_ROLES  # the Text tab's table of every use and its label (read back by the view)
VIEW_STATS = ("grad_norm", "cos", "rows_touched")  # the per-use tags the view draws, in chart order
_TIME = re.compile(r"t(\d+)")
_HASH = re.compile(r"(.*)#(\d+)(\.[^.]+)")  # a use past a module's names: <site>#<k>.<leaf>


# --- labels ---------------------------------------------------------------------------------------


def _module(model: nn.Module, use: str) -> Optional[nn.Module]:
    """The module that made ``use`` (``<site>.<leaf>``, or ``<param>@<site>`` for another's parameter)."""
    site = use.rpartition("@")[2] if "@" in use else use.rpartition(".")[0]
    site = site.split("#")[0]
    try:
        return model if site == type(model).__name__ else model.get_submodule(site)
    except AttributeError:
        return None


def _same_module(model: nn.Module, paths: Iterable[str]) -> bool:
    modules = []
    for path in paths:
        try:
            modules.append(model.get_submodule(path))
        except AttributeError:
            return False
    return len({id(m) for m in modules}) == 1


def _positions(aliases: Sequence[str], pattern: re.Pattern) -> Optional[Tuple[str, List[int], str]]:
    """(prefix, [n per alias], rest) when every alias is ``<prefix><part><rest>`` with ``part``
    matching ``pattern`` (its group 1 a number) at the same place and only there differing."""
    split = [a.split(".") for a in aliases]
    if len({len(s) for s in split}) != 1:
        return None
    for i in range(len(split[0]) - 1):  # the last part is the parameter's own name
        parts = [s[i] for s in split]
        rest = {tuple(s[:i] + s[i + 1:]) for s in split}
        found = [pattern.fullmatch(p) for p in parts]
        if len(rest) == 1 and all(found) and len(set(parts)) == len(parts):
            prefix = ".".join(split[0][:i])
            return prefix, [int(m.group(1)) for m in found], ".".join(split[0][i + 1:])
    return None


def use_labels(model: nn.Module, aliases: Sequence[str]) -> Dict[str, str]:
    """A label for each use (``state_dict`` name) of one tied parameter, in the order given.

    ``input``/``output``: one use by an ``nn.Embedding`` and one by another module. ``t-k``: uses named
    ``<cell>.t<i>.<leaf>`` (a cell unrolled over T steps, one module): ``t-0`` is the last step, the one
    the loss reads. ``depth k``: the same module at several integer positions of one container, k in
    order of position. Anything else keeps its name.
    """
    aliases = list(aliases)
    modules = [_module(model, a) for a in aliases]
    embedding = [a for a, m in zip(aliases, modules) if isinstance(m, nn.Embedding)]
    if len(aliases) == 2 and len(embedding) == 1:
        return {a: "input" if a in embedding else "output" for a in aliases}
    time_steps = _positions(aliases, _TIME)
    if time_steps:
        prefix, steps, _ = time_steps
        if _same_module(model, [".".join(filter(None, [prefix, f"t{k}"])) for k in steps]):
            last = max(steps)
            return {a: f"t-{last - k}" for a, k in zip(aliases, steps)}
    calls = [_HASH.fullmatch(a) for a in aliases[1:]]
    if len(aliases) > 1 and all(m and m.group(1) + m.group(3) == aliases[0] for m in calls):
        return {a: f"depth {k}" for k, a in enumerate(aliases, start=1)}  # one module called at every depth (ALBERT)
    depths = _positions(aliases, re.compile(r"(\d+)"))
    if depths:
        prefix, positions, _ = depths
        if _same_module(model, [".".join(filter(None, [prefix, str(i)])) for i in positions]):
            rank = {p: k for k, p in enumerate(sorted(positions), start=1)}
            return {a: f"depth {rank[p]}" for a, p in zip(aliases, positions)}
    return {a: a for a in aliases}


def label_of(labels: Mapping[str, str], use: str) -> str:
    """The label of ``use`` (a name from the ``tied/<param>/use/<use>/...`` tags): its alias's label,
    with ``#k`` for a call past a module's names (``4#2.weight``); the name itself if unknown."""
    if use in labels:
        return labels[use]
    extra = _HASH.fullmatch(use)
    if extra and extra.group(1) + extra.group(3) in labels:
        return f"{labels[extra.group(1) + extra.group(3)]}#{extra.group(2)}"
    return use


labels_markdown = roles_markdown  # the Text tab's ``uses`` table: parameter, use, label (experiments.use_roles)
read_labels_markdown = parse_roles_markdown


# --- the day's log directory: one run per job -------------------------------------------------------


def run_layout(params: Iterable[str]) -> Dict[str, Dict[str, list]]:
    """The Custom Scalars layout a run writes: for each tied parameter, its summed gradient's norm
    (one line per job) and each use's (one colour per job, a marker per use). Titles name no job, so
    the jobs' layouts merge into one chart per parameter."""
    charts = {}
    for name in params:
        escaped = re.escape(name)
        charts[f"{name}: gradient norm of the sum (.grad)"] = ["Multiline", [f"^tied/{escaped}/grad_norm$"]]
        charts[f"{name}: gradient norm of each use (labels: the Text tab's {LABELS_TEXT})"] = \
            ["Multiline", [f"^tied/{escaped}/use/[^/]+/grad_norm$"]]
    return {"tied parameters": charts}


# --- the per-use view: one run per label -----------------------------------------------------------


def use_run(label: str) -> str:
    """The per-use view's run (a folder of the view) that draws the lines of the uses labelled ``label``."""
    return label.replace("/", "_") or "_"


def label_order(label: str) -> tuple:
    """Sort key of the view's runs (TensorBoard colours runs in their order): the sum, input, output,
    t-0, t-1, ..., depth 1, depth 2, ..., then any other name."""
    kinds = {"input": (1, 0), "output": (1, 1)}
    if label == SUM:
        return (0, 0, "")
    if label in kinds:
        return (*kinds[label], "")
    for rank, pattern in ((2, r"t-(\d+)(#\d+)?"), (3, r"depth (\d+)(#\d+)?")):
        m = re.fullmatch(pattern, label)
        if m:
            return (rank, int(m.group(1)), m.group(2) or "")
    return (4, 0, label)


def _read_run(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 1, "histograms": 1})
    acc.Reload()
    markdown = ""
    if f"{LABELS_TEXT}/text_summary" in acc.Tags().get("tensors", []):
        markdown = acc.Tensors(f"{LABELS_TEXT}/text_summary")[0].tensor_proto.string_val[0].decode()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}, read_labels_markdown(markdown)


Line = Tuple[str, str, str]  # (job, parameter, statistic): one chart of the per-use view


def view_tag(job: str, param: str, stat: str) -> str:
    """The per-use view's tag of a job's parameter and statistic: ``<param> <stat>/<job>``. TensorBoard
    groups cards by the part before the first ``/`` (a group per parameter and statistic, a card per
    job) and, in a card title too long for its width, keeps the part after the last ``/`` whole:
    the job's swept values (``init.gain=0.5,trainer.clip_grad_norm=null``)."""
    return f"{param} {stat}/{job}"


def view_lines(folder: Path) -> Dict[str, Dict[Line, list]]:
    """The per-use view's data for the runs under ``folder``: label -> (job, parameter, statistic) ->
    [(step, wall time, value)], ``job`` the run's path below ``folder`` (its name if it is the run)."""
    folder = Path(folder)
    lines: Dict[str, Dict[Line, list]] = {}
    for run in find_runs(folder):
        job = run.relative_to(folder).as_posix() if run != folder else folder.name
        curves, labels = _read_run(run)
        for tag, events in curves.items():
            parsed = tags.parse(tag)
            if not parsed or parsed.kind != "tied" or parsed.stat not in VIEW_STATS:
                continue
            label = SUM if parsed.use is None else label_of(labels.get(parsed.name, {}), parsed.use)
            points = [(e.step, e.wall_time, e.value) for e in events]
            lines.setdefault(label, {})[(job, parsed.name, parsed.stat)] = points
    return lines


def view_layout(charts: Iterable[Line]) -> Dict[str, Dict[str, list]]:
    """Custom Scalars of the per-use view: a category per job, a chart per parameter and statistic
    (a line per use and, for the gradient norm, one for the sum)."""
    titles = {"grad_norm": "gradient norm of each use and of the sum", "cos": "cosine of each use with the sum",
              "rows_touched": "fraction of rows each use's gradient touches"}
    layout: Dict[str, Dict[str, list]] = {}
    for job, param, stat in sorted(set(charts), key=lambda c: (c[0], VIEW_STATS.index(c[2]), c[1])):
        layout.setdefault(job, {})[f"{param}: {titles[stat]}"] = \
            ["Multiline", [f"^{re.escape(view_tag(job, param, stat))}$"]]
    return layout


def default_view_dir(folder: Path) -> Path:
    """Where ``scripts/uses_view.py`` writes the view of ``folder`` unless told: a folder of the system's
    temporary directory named after it (outside every log directory of the runs)."""
    folder = Path(folder).resolve()
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / "experiments-uses" / f"{folder.name}-{digest}"


def write_view(folder: Path, out: Path) -> List[str]:
    """Write the per-use view of the runs under ``folder`` into ``out`` (replacing an earlier view
    there); returns its runs, in colour order. Raises ``ValueError`` if no run has per-use tags."""
    lines = view_lines(folder)
    if not any(label != SUM for label in lines):
        raise ValueError(f"{folder}: no run below it logged per-use gradients (tied/<param>/use/<use>/...): "
                         f"nothing to draw. Runs of a model with tied parameters log them (telemetry.tied).")
    out = Path(out)
    labels = sorted(lines, key=label_order)
    for stale in out.glob("*/events.out.tfevents.*"):
        stale.unlink()
    first = min(w for series in lines.values() for points in series.values() for _, w, _ in points)
    for i, label in enumerate(labels):
        events = EventFile(out / use_run(label))
        # TensorBoard orders runs, and so colours them, by their earliest event: one per run, in label order
        events.write_event(Event(wall_time=first - 1e-3 * (len(labels) - i), step=0))
        if i == 0:
            events.write_summary(custom_scalars(view_layout(c for series in lines.values() for c in series)))
        by_job: Dict[str, Dict[int, List[Tuple[float, str, float]]]] = {}
        for (job, param, stat), points in lines[label].items():
            for step, wall, value in points:
                by_job.setdefault(job, {}).setdefault(step, []).append((wall, view_tag(job, param, stat), value))
        for steps in by_job.values():  # a job's steps in order (each tag's steps increase), its wall times kept
            for step in sorted(steps):
                values = [Summary.Value(tag=tag, simple_value=value) for _, tag, value in steps[step]]
                events.write_event(Event(wall_time=steps[step][0][0], step=step, summary=Summary(value=values)))
        events.close()
    return [use_run(label) for label in labels]
