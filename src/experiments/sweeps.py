"""How a sweep behaves: Hydra callbacks listed in ``conf/config.yaml``.

Where a sweep's jobs land: a folder per sweep that no other sweep shares, a folder per job
named by its overrides (so TensorBoard's run list reads ``init=xavier,model=tied``); and how it
ends: non-zero, naming the jobs that failed.

- :class:`UniqueSweepDir` (a Hydra callback, listed in ``conf/config.yaml``) claims the sweep
  folder with an atomic ``mkdir`` before any job starts. When the folder is time-stamped
  (``${now:...}``, the default) and another sweep already has it, because both started in the
  same second, this sweep takes ``<time>-2`` (then ``-3``, ...). A folder given explicitly
  (``hydra.sweep.dir=...``) is used as given, so a sweep can be resumed in place.
- job folders are named by the ``${job_dirname:...}`` resolver (``runs.job_dirname``). Importing
  this module registers it: a sweep's workers import it when they unpickle the callbacks, before
  they resolve their folder.
- :class:`SweepSummary` closes every sweep with a summary: how many jobs finished, failed or did
  not finish, the best job and its ``loss/val``, the failed jobs' reasons and the report command;
  it exits non-zero if any job left a ``failure.txt``.

This module imports nothing heavy.
"""

from __future__ import annotations

import logging
import math
import sys
from collections import Counter
from itertools import count
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .runs import FAILURE_FILE, load_jobs, register_resolvers
from .telemetry import tags

log = logging.getLogger(__name__)


def claim_folder(base: Path) -> Path:
    """Create and return ``base``, or ``base-2``, ``base-3``, ... whichever nobody has yet."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in count(1):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def quote_override_value(value: str) -> str:
    """``value`` as a quoted string in Hydra's override grammar."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class UniqueSweepDir(Callback):
    """Gives each time-stamped sweep a folder of its own (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        spec = OmegaConf.to_container(config.hydra.sweep, resolve=False)["dir"]
        base = Path(str(config.hydra.sweep.dir))
        if "${now:" not in str(spec):  # an explicit folder: the user's choice, shared on purpose
            log.info("sweep folder: %s", base)
            return
        claimed = claim_folder(base)
        if claimed != base:
            # Every job recomposes its config from the hydra overrides: add the folder to them.
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.sweep.dir = str(claimed)
                config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quote_override_value(str(claimed))}")
        log.info("sweep folder: %s  (report: python scripts/report.py %s)", claimed, claimed)


def remove_empty_id_templates(sweep_dir: Path) -> None:
    """submitit's local launcher creates its folder template ``.submitit/%j`` literally (the jobs' files
    go to ``.submitit/<job id>/``); remove such a folder when it is empty."""
    for folder in sweep_dir.glob(".submitit/*%*"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


class SweepSummary(Callback):
    """At the end of a sweep, successful or not: a summary, and a non-zero exit if any job failed."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        remove_empty_id_templates(sweep_dir)
        logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its reader's "No path found after ..."
        try:
            jobs = load_jobs(sweep_dir)  # best loss/val first; reads the event files
        except FileNotFoundError:
            log.error("the sweep in %s left no job folders", sweep_dir)
            sys.exit(1)
        counts = Counter(j.status for j in jobs)
        lines = [f"sweep finished: {len(jobs)} job(s) in {sweep_dir}: "
                 + ", ".join(f"{counts[s]} {s}" for s in ("ok", "failed", "incomplete") if counts[s])]
        best = next((j for j in jobs if j.status == "ok" and not math.isnan(j.last(tags.LOSS_VAL))), None)
        if best:
            lines.append(f"  best: {best.name}  {tags.LOSS_VAL} {best.last(tags.LOSS_VAL):.6g}")
        failed = [j for j in jobs if j.status == "failed"]
        lines += [f"  failed: {j.name}: {j.reason.split('. ')[0][:200]}" for j in failed]
        lines += [f"  incomplete (neither finished nor failed): {j.name}" for j in jobs if j.status == "incomplete"]
        lines.append(f"  report: python scripts/report.py {sweep_dir}")
        if failed:
            log.error("%s\n  %d job(s) failed; each one's %s says why", "\n".join(lines), len(failed), FAILURE_FILE)
            sys.exit(1)
        log.info("%s", "\n".join(lines))

register_resolvers()
