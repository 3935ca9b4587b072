"""Compare the jobs of a sweep (or one run) from their TensorBoard event files.

``python scripts/report.py <sweep or run folder>`` writes ``report.md``, ``report.csv`` and PNG
figures into that folder and prints the table. Values are read with TensorBoard's own reader.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import OmegaConf

from .failures import FAILURE_FILE

Series = Dict[str, List[tuple]]  # tag -> [(step, value, wall_time)]


@dataclass
class Job:
    folder: Path
    overrides: str
    status: str  # ok | failed | incomplete
    reason: str = ""
    choices: Dict[str, str] = field(default_factory=dict)
    series: Series = field(default_factory=dict)

    def last(self, tag: str) -> float:
        points = self.series.get(tag)
        return points[-1][1] if points else math.nan

    @property
    def steps(self) -> int:
        return max((p[-1][0] for p in self.series.values() if p), default=0)

    @property
    def wall_time(self) -> float:
        times = [t for points in self.series.values() for _, _, t in points]
        return max(times) - min(times) if times else math.nan

    @property
    def tied(self) -> List[str]:
        return sorted({m.group(1) for tag in self.series if (m := re.match(r"tied/([^/]+)/grad_norm$", tag))})


def read_series(folder: Path) -> Series:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def find_jobs(root: Path) -> List[Job]:
    """Every run folder (one with ``.hydra/config.yaml``) at or below ``root``."""
    root = Path(root)
    folders = sorted({p.parent.parent for p in root.rglob(".hydra/config.yaml")})
    jobs = []
    for folder in folders:
        hydra_dir = folder / ".hydra"
        overrides = OmegaConf.load(hydra_dir / "overrides.yaml") if (hydra_dir / "overrides.yaml").exists() else []
        choices = {}
        if (hydra_dir / "hydra.yaml").exists():
            choices = dict(OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.choices)
        if (folder / FAILURE_FILE).exists():
            status, reason = "failed", (folder / FAILURE_FILE).read_text().strip()
        elif (folder / "weights_final.pt").exists():
            status, reason = "ok", ""
        else:
            status, reason = "incomplete", "no weights_final.pt and no failure.txt: still running or killed"
        series = read_series(folder) if any(folder.glob("events.out.tfevents.*")) else {}
        jobs.append(Job(folder, ",".join(overrides) or "(defaults)", status, reason, choices, series))
    return jobs


def rows(jobs: List[Job], root: Path) -> List[Dict[str, object]]:
    """One row per job, sorted by final validation loss (failed and unfinished last)."""
    out = []
    for job in jobs:
        row = {"run": str(job.folder.relative_to(root)), "overrides": job.overrides, "status": job.status, "steps": job.steps,
               "wall_time_s": round(job.wall_time, 3), "loss_train": job.last("loss/train"),
               "loss_val": job.last("loss/val")}
        if "acc/val" in job.series:
            row["acc_val"] = job.last("acc/val")
        for name in job.tied:
            row[f"norm {name}"] = job.last(f"param_norm/{name}")
            row[f"cancellation {name}"] = job.last(f"tied/{name}/cancellation")
        out.append(row)
    key = lambda r: (r["status"] != "ok", r["loss_val"] if not math.isnan(r["loss_val"]) else math.inf)  # noqa: E731
    return sorted(out, key=key)


def columns(table: List[Dict[str, object]]) -> List[str]:
    cols: List[str] = []
    for row in table:
        cols += [c for c in row if c not in cols]
    return cols


def fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def markdown(table: List[Dict[str, object]], jobs: List[Job]) -> str:
    cols = columns(table)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, math.nan)) for c in cols) + " |" for r in table]
    ok = [r for r in table if r["status"] == "ok" and not math.isnan(r["loss_val"])]
    head = [f"# Report: {len(table)} job(s), {len(table) - len(ok)} failed or unfinished", ""]
    if ok:
        head += [f"Best: `{ok[0]['overrides']}` with final validation loss {fmt(ok[0]['loss_val'])}.", ""]
    failed = [j for j in jobs if j.status != "ok"]
    tail = ["", "## Failed or unfinished", ""] + [f"- `{j.overrides}`: {j.reason}" for j in failed] if failed else []
    figures = ["", "Figures: `val_loss.png`, `param_norms.png`" + (", `tied_grads.png`" if any(j.tied for j in jobs) else "")]
    return "\n".join(head + lines + tail + figures) + "\n"


def write_csv(table: List[Dict[str, object]], path: Path) -> None:
    cols = columns(table)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows([{c: fmt(r.get(c, math.nan)) for c in cols} for r in table])


def figures(jobs: List[Job], folder: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for job in jobs:
        points = job.series.get("loss/val", [])
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=job.overrides)
    ax.set(xlabel="step", ylabel="loss/val", yscale="log", title="Validation loss of every job")
    ax.legend(fontsize=7)
    written.append(_save(fig, folder / "val_loss.png"))

    schemes = sorted({job.choices.get("init", "?") for job in jobs})
    fig, axes = plt.subplots(1, len(schemes), figsize=(6 * len(schemes), 4.5), squeeze=False)
    for ax, scheme in zip(axes[0], schemes):
        for job in (j for j in jobs if j.choices.get("init", "?") == scheme):
            for tag, points in sorted(job.series.items()):
                if tag.startswith("param_norm/"):
                    ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1,
                            label=f"{job.choices.get('model', job.folder.name)}: {tag[11:]}")
        ax.set(title=f"init={scheme}: parameter norms", xlabel="step", ylabel="L2 norm")
        ax.legend(fontsize=6)
    written.append(_save(fig, folder / "param_norms.png"))

    tied_jobs = [j for j in jobs if j.tied]
    if tied_jobs:
        fig, axes = plt.subplots(len(tied_jobs), 1, figsize=(8, 3.5 * len(tied_jobs)), squeeze=False)
        for ax, job in zip(axes[:, 0], tied_jobs):
            for name in job.tied:
                for tag, points in sorted(job.series.items()):
                    if tag == f"tied/{name}/grad_norm" or (tag.startswith(f"tied/{name}/use/") and tag.endswith("/grad_norm")):
                        label = "sum" if tag.endswith(f"{name}/grad_norm") and "/use/" not in tag else tag.split("/use/")[1][:-10]
                        ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1, label=f"{name}: {label}")
            ax.set(title=job.overrides, xlabel="step", ylabel="gradient norm")
            ax.legend(fontsize=6)
        written.append(_save(fig, folder / "tied_grads.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report(folder: Path) -> Optional[List[Dict[str, object]]]:
    """Write report.md, report.csv and the figures into ``folder``; return the rows (None: no runs)."""
    folder = Path(folder)
    jobs = find_jobs(folder)
    if not jobs:
        return None
    table = rows(jobs, folder)
    (folder / "report.md").write_text(markdown(table, jobs))
    write_csv(table, folder / "report.csv")
    figures(jobs, folder)
    return table
