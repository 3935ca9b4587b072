"""The report of a sweep (or of one run): one row per job, read from the event files with
TensorBoard's own reader.

    python scripts/report.py outputs/multirun/2026-11-22/10-54-38   # a sweep
    python scripts/report.py outputs/2026-11-22/10-30-00             # one run

writes ``report.md``, ``report.csv`` and PNG figures (see ``report_figures``) into that folder.
A row has the job's overrides, its status (``ok``; ``failed``: it left a ``failure.txt``;
``incomplete``: neither finished nor failed, e.g. killed or still running), steps, wall time,
the final train and validation loss (and accuracy), and for each tied parameter its final norm
and final cancellation when they were logged. Rows are sorted by validation loss.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import OmegaConf

from .failures import FAILURE_FILE

log = logging.getLogger(__name__)

EVENTS = "events.out.tfevents."
TIED = re.compile(r"^tied/([^/]+)/(grad_norm|cancellation|use/([^/]+)/grad_norm)$")
Curve = List[Tuple[int, float, float]]  # (step, wall time, value)


@dataclass
class Job:
    """One run folder and what its event files say."""

    path: Path
    name: str  # relative to the report's folder
    overrides: List[str] = field(default_factory=list)
    choices: Dict[str, str] = field(default_factory=dict)
    status: str = "incomplete"
    reason: str = ""
    curves: Dict[str, Curve] = field(default_factory=dict)
    started: float = math.nan  # wall time of the first event (the writer's creation)

    def last(self, tag: str) -> float:
        curve = self.curves.get(tag)
        return curve[-1][2] if curve else math.nan

    @property
    def steps(self) -> int:
        return max((c[-1][0] for c in self.curves.values() if c), default=0)

    @property
    def wall_time(self) -> float:
        times = [t for c in self.curves.values() for _, t, _ in c]
        return max(times) - min(times + [self.started]) if times else math.nan

    def tied(self) -> List[str]:
        """Tied parameters with logged telemetry, in the order their tags sort."""
        return sorted({m.group(1) for tag in self.curves if (m := TIED.match(tag))})

    def uses(self, name: str) -> List[str]:
        return sorted({m.group(3) for tag in self.curves if (m := TIED.match(tag)) and m.group(1) == name and m.group(3)})


def is_run(folder: Path) -> bool:
    names = os.listdir(folder)
    return any(n.startswith(EVENTS) for n in names) or FAILURE_FILE in names or os.path.isdir(folder / ".hydra")


def find_runs(root: Path) -> List[Path]:
    """``root`` itself if it is a run, else every run folder below it (hidden folders skipped)."""
    runs = []
    for here, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if is_run(Path(here)):
            runs.append(Path(here))
            dirs[:] = []  # a run's sub-folders (checkpoints, ...) are part of it
    return runs


def read_curves(folder: Path) -> Tuple[Dict[str, Curve], float]:
    """Every scalar curve of a run, read with TensorBoard's EventAccumulator, and when it started."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sizes = {"scalars": 0, "histograms": 1, "tensors": 1, "images": 1, "audio": 1, "compressedHistograms": 1}
    acc = EventAccumulator(str(folder), size_guidance=sizes)
    acc.Reload()
    curves = {tag: [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    try:
        started = acc.FirstEventTimestamp()
    except ValueError:  # no events at all
        started = math.nan
    return curves, started


def status_of(folder: Path) -> Tuple[str, str]:
    failure, final = folder / FAILURE_FILE, folder / "weights_final.pt"
    if failure.exists() and (not final.exists() or failure.stat().st_mtime >= final.stat().st_mtime):
        return "failed", " ".join(failure.read_text().split())
    return ("ok", "") if final.exists() else ("incomplete", "")


def load_job(folder: Path, root: Path) -> Job:
    name = str(folder.relative_to(root)) if folder != root else folder.name
    job = Job(path=folder, name=name)
    hydra_dir = folder / ".hydra"
    if (hydra_dir / "overrides.yaml").exists():
        job.overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    if (hydra_dir / "hydra.yaml").exists():
        choices = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.choices
        job.choices = {str(k): str(v) for k, v in choices.items() if not str(k).startswith("hydra")}
    job.status, job.reason = status_of(folder)
    if any(n.startswith(EVENTS) for n in os.listdir(folder)):
        job.curves, job.started = read_curves(folder)
    return job


def load_jobs(root: Path) -> List[Job]:
    """The runs under ``root``, best validation loss first (failed and unfinished ones last)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: give a sweep folder or a run folder")
    jobs = [load_job(folder, root) for folder in find_runs(root)]
    if not jobs:
        raise FileNotFoundError(f"no runs under {root}: a run folder has event files or a .hydra folder")
    return sorted(jobs, key=sort_key)


def sort_key(job: Job):
    val = job.last("loss/val")
    return (job.status != "ok", math.isnan(val), val if not math.isnan(val) else 0.0, job.name)


def varying_overrides(jobs: List[Job]) -> Tuple[List[List[str]], List[str]]:
    """Each job's overrides without those every job shares, and the shared ones."""
    if len(jobs) < 2:
        return [j.overrides for j in jobs], []
    common = set(jobs[0].overrides).intersection(*(j.overrides for j in jobs[1:]))
    shared = [o for o in jobs[0].overrides if o in common]
    return [[o for o in j.overrides if o not in common] for j in jobs], shared


def rows(jobs: List[Job]) -> Tuple[List[str], List[Dict[str, object]]]:
    """The table: column names and one dict per job (numbers as floats, NaN where not logged)."""
    tied = sorted({t for j in jobs for t in j.tied()})
    accuracy = any("acc/val" in j.curves for j in jobs)
    columns = ["rank", "job", "overrides", "status", "steps", "wall_time_s", "loss/train", "loss/val"]
    columns += ["acc/val"] * accuracy
    columns += [c for t in tied for c in (f"norm {t}", f"cancellation {t}")]
    table = []
    for rank, (job, overrides) in enumerate(zip(jobs, varying_overrides(jobs)[0]), start=1):
        row = {"rank": rank, "job": job.name, "overrides": " ".join(overrides) or "(none)", "status": job.status,
               "steps": job.steps, "wall_time_s": job.wall_time,
               "loss/train": job.last("loss/train"), "loss/val": job.last("loss/val")}
        if accuracy:
            row["acc/val"] = job.last("acc/val")
        mine = job.tied()
        for t in tied:  # a column per tied parameter; empty for jobs where that name is not tied
            row[f"norm {t}"] = job.last(f"param_norm/{t}") if t in mine else math.nan
            row[f"cancellation {t}"] = job.last(f"tied/{t}/cancellation") if t in mine else math.nan
        table.append(row)
    return columns, table


def cell(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def markdown_table(columns: List[str], table: List[Dict[str, object]]) -> str:
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(escape(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in table:
        status = row["status"] if row["status"] == "ok" else f"**{str(row['status']).upper()}**"
        values = [status if c == "status" else cell(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(escape(v) for v in values) + " |")
    return "\n".join(lines)


def csv_text(columns: List[str], table: List[Dict[str, object]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in table:  # full precision: repr of the float the event file holds
        writer.writerow({c: ("" if isinstance(v, float) and math.isnan(v) else v) for c, v in row.items()})
    return out.getvalue()


def optuna_results(root: Path) -> Optional[str]:
    path = Path(root) / "optimization_results.yaml"
    if not path.exists():
        return None
    results = OmegaConf.to_container(OmegaConf.load(path))
    params = ", ".join(f"`{k}={v}`" for k, v in results.get("best_params", {}).items())
    return f"Optuna's best trial: {params} with value {results.get('best_value')} (from {path.name})."


def summary(root: Path, jobs: List[Job]) -> str:
    done = [j for j in jobs if j.status == "ok"]
    counts = ", ".join(f"{sum(j.status == s for j in jobs)} {s}" for s in ("ok", "failed", "incomplete")
                       if any(j.status == s for j in jobs))
    lines = [f"{len(jobs)} run(s) in `{root}`: {counts}."]
    overrides, shared = varying_overrides(jobs)
    if shared:
        lines.append("Every job has: `" + " ".join(shared) + "`.")
    if done:
        best = done[0]
        label = " ".join(overrides[jobs.index(best)]) or best.name
        lines.append(f"Lowest validation loss: `{label}` with loss/val {cell(best.last('loss/val'))}"
                     + (f", then `{' '.join(overrides[jobs.index(done[1])]) or done[1].name}` with "
                        f"{cell(done[1].last('loss/val'))}." if len(done) > 1 else "."))
    optuna = optuna_results(root)
    if optuna:
        lines.append(optuna)
    return "\n".join(lines)


@dataclass
class Report:
    folder: Path
    table: str  # the markdown table
    text: str  # the whole report.md
    files: List[Path]
    failed: List[str]  # names of the jobs that failed


def write_report(folder: Path, figures: bool = True) -> Report:
    """Write ``report.md``, ``report.csv`` and the figures into ``folder``; return what was written."""
    root = Path(folder)
    jobs = load_jobs(root)
    columns, table = rows(jobs)
    md_table = markdown_table(columns, table)
    parts = [f"# Report: {root.name}", "", summary(root, jobs), "", md_table]
    failed = [j for j in jobs if j.status == "failed"]
    if failed:
        parts += ["", "## Failed jobs", ""] + [f"- `{j.name}`: {j.reason}" for j in failed]
    files = [root / "report.csv"]
    (root / "report.csv").write_text(csv_text(columns, table))
    if figures:
        from .report_figures import draw_figures

        pngs = draw_figures(root, jobs)
        files += pngs
        if pngs:
            parts += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    (root / "report.md").write_text("\n".join(parts) + "\n")
    files.insert(0, root / "report.md")
    log.info("wrote %s", ", ".join(str(p) for p in files))
    return Report(root, md_table, "\n".join(parts) + "\n", files, [j.name for j in failed])
