"""The report of a sweep (or of one run): one row per job, read from the event files with
TensorBoard's own reader.

    python scripts/report.py outputs/multirun/2026-11-22/10-54-38   # a sweep
    python scripts/report.py outputs/2026-11-22/10-30-00.412345-tied-xavier   # one run

writes ``report.md``, ``report.csv``, ``headline.csv`` and PNG figures (see ``report_figures``) into
that folder, or another one (``--out``; a folder that cannot be written is one paragraph naming it
and ``--out``). ``report.md`` opens with the headline (``headline``): each job's finding about its tied
parameters as numbers, the jobs in the order of what the sweep varies. Then the jobs, best validation
loss first: a row has the job's overrides, its status (``ok``; ``failed``: it left a ``failure.txt``;
``incomplete``: neither finished nor failed, e.g. killed or still running), steps, wall time, the
final train and validation loss (and accuracy), and for each tied parameter its final norm and final
cancellation when they were logged. ``report.md`` shows only the columns whose values differ between
jobs (and of the tied parameters only those the headline shows); ``report.csv`` has every column.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from . import headline
from .errors import StorageError, UnreadableFile
from .run_files import load_yaml, write_replacing
from .run_folder import WRITE_ERRORS
from .runs import Job, expected_jobs, load_jobs, varying_overrides
from .telemetry import tags

log = logging.getLogger(__name__)


def rows(jobs: List[Job]) -> Tuple[List[str], List[Dict[str, object]]]:
    """The table: column names and one dict per job (numbers as floats, NaN where not logged)."""
    tied = sorted({t for j in jobs for t in j.tied()})
    accuracy = any(tags.ACC_VAL in j.curves for j in jobs)
    columns = ["rank", "job", "overrides", "status", "steps", "wall_time_s", tags.LOSS_TRAIN, tags.LOSS_VAL]
    columns += [tags.ACC_VAL] * accuracy
    columns += [c for t in tied for c in (f"norm {t}", f"cancellation {t}")]
    table = []
    for rank, (job, overrides) in enumerate(zip(jobs, varying_overrides(jobs)[0]), start=1):
        row = {"rank": rank, "job": job.name, "overrides": " ".join(overrides) or "(none)", "status": job.status,
               "steps": job.steps, "wall_time_s": job.wall_time,
               tags.LOSS_TRAIN: job.last(tags.LOSS_TRAIN), tags.LOSS_VAL: job.last(tags.LOSS_VAL)}
        if accuracy:
            row[tags.ACC_VAL] = job.last(tags.ACC_VAL)
        mine = job.tied()
        for t in tied:  # a column per tied parameter; empty for jobs where that name is not tied
            row[f"norm {t}"] = job.last(tags.param_norm(t)) if t in mine else math.nan
            row[f"cancellation {t}"] = job.last(tags.cancellation(t)) if t in mine else math.nan
        table.append(row)
    return columns, table


def cell(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def shown_columns(columns: List[str], table: List[Dict[str, object]], tied: Sequence[str]) -> List[str]:
    """The columns ``report.md`` shows: rank and job, then those whose values differ between the jobs
    (every one that has a value, for a single job), of the tied parameters only ``tied``'s."""
    def differs(column: str) -> bool:
        values = {cell(row.get(column, "")) for row in table}
        return len(values) > 1 if len(table) > 1 else values != {""}

    kept = [c for c in columns[3:] if differs(c) and (" " not in c or c.split(" ", 1)[1] in tied)]
    return ["rank", "job"] + kept


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
    try:
        results = OmegaConf.to_container(load_yaml(path, root), resolve=False)
        params = ", ".join(f"`{k}={v}`" for k, v in results.get("best_params", {}).items())
    except UnreadableFile as e:
        return f"Optuna's results are not shown: {path.name} is not read: {e.reason}."
    except Exception as e:  # not Optuna's file
        return f"Optuna's results are not shown: {path.name} cannot be read ({type(e).__name__})."
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
        lines.append(f"Lowest validation loss: `{label}` with loss/val {cell(best.last(tags.LOSS_VAL))}"
                     + (f", then `{' '.join(overrides[jobs.index(done[1])]) or done[1].name}` with "
                        f"{cell(done[1].last(tags.LOSS_VAL))}." if len(done) > 1 else "."))
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
    missing: List[str]  # jobs the sweep was to run that never started (a killed sweep)
    incomplete: List[str]  # jobs that neither finished nor failed (killed, or still running)


def write_report(folder: Path, figures: bool = True, out: Optional[Path] = None) -> Report:
    """Write ``report.md``, ``report.csv`` and the figures into ``out`` (by default ``folder``); return
    what was written. A folder that cannot be written is a :class:`StorageError` naming it."""
    root = Path(folder)
    jobs = load_jobs(root)
    out = Path(out) if out is not None else root
    try:
        return _write(root, jobs, figures, out)
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            raise
        other = ("choose another folder for it with --out <folder> (python scripts/report.py "
                 f"{root} --out <folder>)" if out == root else "choose another --out folder")
        raise StorageError(f"cannot write the report into {out}: {WRITE_ERRORS[e.errno]}. Make the folder "
                           f"writable, or {other}.") from None


def _write(root: Path, jobs: List[Job], figures: bool, out: Path) -> Report:
    out.mkdir(parents=True, exist_ok=True)
    columns, table = rows(jobs)
    lines = headline.headline(jobs)
    shown = shown_columns(columns, table, {line.param for line in lines})
    md_table = markdown_table(shown, [{**row, "job": row["overrides"] if row["overrides"] != "(none)" else row["job"]}
                                      for row in table])
    parts = [f"# Report: {root.name}", "", summary(root, jobs)]
    found = headline.markdown(lines, jobs)
    if found:
        parts += ["", "## Headline", "", found]
    parts += ["", "## Jobs, best validation loss first", "", md_table]
    failed = [j for j in jobs if j.status == "failed"]
    if failed:
        parts += ["", "## Failed jobs", ""] + [f"- `{j.name}`: {j.reason}" for j in failed]
    missing = [name for name in expected_jobs(root) or [] if name not in {j.name for j in jobs}]
    if missing:
        parts[2] += f"\n{len(missing)} job(s) of the sweep never started (it was stopped): {', '.join(missing)}."
        parts += ["", "## Jobs that never started", ""] + [f"- `{name}`" for name in missing]
    files = [out / "report.csv", out / "headline.csv"]
    write_replacing(out / "report.csv", csv_text(columns, table).encode())
    write_replacing(out / "headline.csv", headline.csv_text(lines).encode())
    if figures:
        from .report_figures import draw_figures

        pngs = draw_figures(out, jobs)
        files += pngs
        if pngs:
            parts += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    write_replacing(out / "report.md", ("\n".join(parts) + "\n").encode())
    files.insert(0, out / "report.md")
    log.info("wrote %s", ", ".join(str(p) for p in files))
    return Report(root, md_table, "\n".join(parts) + "\n", files, [j.name for j in failed], missing,
                  [j.name for j in jobs if j.status == "incomplete"])
