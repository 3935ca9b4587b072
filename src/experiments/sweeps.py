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
- :class:`SweepFailures` exits non-zero at the end of a sweep if any job left a ``failure.txt``.

This module imports nothing heavy.
"""

from __future__ import annotations

import logging
import sys
from itertools import count
from pathlib import Path
from typing import Any, List

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .runs import FAILURE_FILE, register_resolvers

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


class SweepFailures(Callback):
    """At the end of a sweep, exit non-zero if any job left a ``failure.txt``."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed: List[str] = sorted(str(p.parent.relative_to(sweep_dir)) for p in sweep_dir.rglob(FAILURE_FILE))
        if failed:
            reasons = [(sweep_dir / name / FAILURE_FILE).read_text().strip().split(". ")[0] for name in failed]
            log.error("%d job(s) of the sweep in %s failed (see each job's %s):\n%s", len(failed), sweep_dir,
                      FAILURE_FILE, "\n".join(f"  {name}: {why[:200]}" for name, why in zip(failed, reasons)))
            sys.exit(1)


register_resolvers()
