"""The report's PNG figures (matplotlib, imported only here, drawn without a display).

- ``val_loss.png``: the validation loss of every job in one plot (failed jobs dashed);
- ``param_norms_<init>.png``: for each init scheme, every parameter's norm over time, one panel per job;
- ``tied_grad_norms.png``: for each tied parameter of each job, the summed gradient norm and
  each use's own, labelled by its role (*input*/*output*, ``t-k``, ``depth k``), when they were logged;
- ``grad_through_time.png``: for a recurrent cell unrolled in time (uses ``t-0`` … ``t-k``),
  the gradient norm of each time step's use against its distance from the loss, log scale, one
  line per logged step: vanishing gradients fall with distance, exploding ones rise.

Panels and legends follow the order of what the sweep varies (``runs.by_swept_value``), not the loss.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Dict, List

from . import use_roles
from .run_files import write_replacing
from .runs import Job, by_swept_value, varying_overrides
from .telemetry import tags

MAX_PANELS = 12  # per figure; more jobs than that are left out of the per-job figures, with a note


LONG_FLOAT = re.compile(r"(?<![\w.])\d+\.\d+(?:[eE][-+]?\d+)?(?![\w.])")  # as Optuna writes them: 0.0123456789012345


def short_floats(text: str) -> str:
    """Floats with more than 8 characters to 4 significant digits, so a label keeps every override."""
    return LONG_FLOAT.sub(lambda m: f"{float(m.group()):.4g}" if len(m.group()) > 8 else m.group(), text)


def _label(job: Job, overrides: List[str], width: int = 60) -> str:
    text = short_floats(" ".join(overrides)) or job.name
    return text if len(text) <= width else text[: width - 1] + "…"


def _steps_values(curve):
    return [s for s, _, _ in curve], [v for _, _, v in curve]


def _marker(curve):
    return "o" if len(curve) < 30 else None  # a curve of a few points stays visible


def _grid(plt, n: int, width: float = 4.5, height: float = 3.2):
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _param_norm_tags(job: Job):
    """(tag, parameter name) of each parameter-norm curve, sorted."""
    return sorted((t, p.name) for t, p in ((t, tags.parse(t)) for t in job.curves) if p and p.kind == "param_norm")


def _log_scale_if_positive(ax, values) -> None:
    positive = [v for v in values if v == v and v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 20:
        ax.set_yscale("log")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    write_replacing(path, png.getvalue())  # not through a link that has the name
    return path


def draw_figures(root: Path, jobs: List[Job]) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = dict(zip((j.name for j in jobs), (_label(j, o) for j, o in zip(jobs, varying_overrides(jobs)[0]))))
    jobs = by_swept_value(jobs)
    written = []
    try:
        written.append(_val_loss(plt, root, jobs, labels))
        written += _param_norms(plt, root, jobs, labels)
        for draw in (_tied_grad_norms, _grad_through_time):
            path = draw(plt, root, jobs, labels)
            if path:
                written.append(path)
    finally:
        plt.close("all")
    return written


def _val_loss(plt, root: Path, jobs: List[Job], labels: Dict[str, str]) -> Path:
    fig, ax = plt.subplots(figsize=(9, 5.5))
    values = []
    for job in jobs:
        curve = job.curves.get(tags.LOSS_VAL, [])
        if curve:
            steps, vals = _steps_values(curve)
            values += vals
            style = "-" if job.status == "ok" else "--"
            ax.plot(steps, vals, style, marker="o", markersize=3, label=f"{labels[job.name]} ({job.status})"
                    if job.status != "ok" else labels[job.name])
    if not values:
        ax.text(0.5, 0.5, "no loss/val logged", ha="center", va="center", transform=ax.transAxes)
    _log_scale_if_positive(ax, values)
    ax.set(xlabel="step", ylabel="loss/val", title="Validation loss of every job")
    if values:
        ax.legend(fontsize="small" if len(jobs) <= 10 else "x-small", loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, root / "val_loss.png")


def _param_norms(plt, root: Path, jobs: List[Job], labels: Dict[str, str]) -> List[Path]:
    schemes: Dict[str, List[Job]] = {}
    for job in jobs:
        if _param_norm_tags(job):
            schemes.setdefault(job.choices.get("init", "unknown"), []).append(job)
    written = []
    for scheme, members in schemes.items():
        shown = members[:MAX_PANELS]
        fig, axes = _grid(plt, len(shown))
        for ax, job in zip(axes, shown):
            values = []
            for tag, name in _param_norm_tags(job):
                steps, vals = _steps_values(job.curves[tag])
                values += vals
                ax.plot(steps, vals, marker=_marker(steps), markersize=3, label=name)
            _log_scale_if_positive(ax, values)
            ax.set_title(labels[job.name] + ("" if job.status == "ok" else f" ({job.status})"), fontsize="small")
            ax.set(xlabel="step", ylabel="parameter norm")
            ax.legend(fontsize="xx-small", ncol=2)
            ax.grid(alpha=0.3)
        more = f" (first {MAX_PANELS} of {len(members)} jobs)" if len(members) > MAX_PANELS else ""
        fig.suptitle(f"Parameter norms, init={scheme}{more}")
        safe = re.sub(r"[^\w.-]+", "_", scheme)
        written.append(_save(fig, root / f"param_norms_{safe}.png"))
    return written


def _tied_grad_norms(plt, root: Path, jobs: List[Job], labels: Dict[str, str]):
    panels = [(job, name) for job in jobs for name in job.tied() if tags.tied_grad_norm(name) in job.curves]
    if not panels:
        return None
    shown = panels[:MAX_PANELS]
    fig, axes = _grid(plt, len(shown))
    for ax, (job, name) in zip(axes, shown):
        steps, vals = _steps_values(job.curves[tags.tied_grad_norm(name)])
        ax.plot(steps, vals, color="black", linewidth=2, marker=_marker(steps), label="sum (.grad)")
        for use, role in job.use_roles(name).items():
            tag = tags.use_stat(name, use, "grad_norm")
            if tag in job.curves:
                ax.plot(*_steps_values(job.curves[tag]), linewidth=1, marker=_marker(steps), markersize=3,
                        label=f"{role} ({use})")
        ax.set_title(f"{name} — {labels[job.name]}", fontsize="small")
        ax.set(xlabel="step", ylabel="gradient norm")
        ax.legend(fontsize="x-small")
        ax.grid(alpha=0.3)
    more = f" (first {MAX_PANELS} of {len(panels)})" if len(panels) > MAX_PANELS else ""
    fig.suptitle(f"Tied parameters: summed and per-use gradient norms{more}")
    return _save(fig, root / "tied_grad_norms.png")


def through_time(job: Job):
    """(parameter, {distance from the loss: curve of its use's gradient norm}) for a cell unrolled in
    time (uses ``t-k``), or None.
    ``weight_ih`` if there is one: its gradient at step t is the error reaching step t times that
    step's input, an input of the same scale at every step, so it shows how the error fades or grows
    (``weight_hh``'s first steps multiply a hidden state still growing from zero)."""
    found = {}
    for name in job.tied():
        roles = job.use_roles(name)
        if use_roles.kind_of_roles(list(roles.values())) != use_roles.TIME:
            continue
        steps = {use_roles.distance(role): job.curves[tags.use_stat(name, use, "grad_norm")]
                 for use, role in roles.items() if tags.use_stat(name, use, "grad_norm") in job.curves}
        if len(steps) > 1:
            found[name] = steps
    if not found:
        return None
    name = next((n for n in found if n.endswith("weight_ih")), sorted(found)[0])
    return name, found[name]


def _grad_through_time(plt, root: Path, jobs: List[Job], labels: Dict[str, str]):
    panels = [(job, found) for job in jobs if (found := through_time(job))]
    if not panels:
        return None
    shown = panels[:MAX_PANELS]
    fig, axes = _grid(plt, len(shown))
    colours = plt.get_cmap("viridis")
    for ax, (job, (name, steps)) in zip(axes, shown):
        logged = sorted(set.intersection(*({s for s, _, _ in curve} for curve in steps.values())))
        picked = logged if len(logged) <= 8 else [logged[round(i * (len(logged) - 1) / 7)] for i in range(8)]
        for i, step in enumerate(picked):
            points = sorted((distance, v) for distance, curve in steps.items()
                            for s, _, v in curve if s == step and v > 0)  # 0 (the first step's h is 0) has no log
            ax.plot([d for d, _ in points], [v for _, v in points], marker="o", markersize=3,
                    color=colours(i / max(1, len(picked) - 1)), label=f"step {step}")
        ax.set_yscale("log")
        ax.set_title(f"{name} — {labels[job.name]}", fontsize="small")
        ax.set(xlabel="distance from the loss, k of the use t-k (time steps)", ylabel="gradient norm of that step's use")
        ax.legend(fontsize="xx-small", ncol=2)
        ax.grid(alpha=0.3, which="both")
    more = f" (first {MAX_PANELS} of {len(panels)})" if len(panels) > MAX_PANELS else ""
    fig.suptitle(f"Gradient through time: each time step's share of the cell's input-weight gradient{more}\n"
                 f"(falling to the right: vanishing; rising: exploding; a step whose gradient is exactly 0 is left out)",
                 fontsize="medium")
    return _save(fig, root / "grad_through_time.png")
