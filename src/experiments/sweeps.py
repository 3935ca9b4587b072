"""Where a sweep's jobs land: a folder per sweep that no other sweep shares, a folder per job
named by its overrides (so TensorBoard's run list reads ``init=xavier,model=tied``).

- :class:`UniqueSweepDir` (a Hydra callback, listed in ``conf/config.yaml``) claims the sweep
  folder with an atomic ``mkdir`` before any job starts. When the folder is time-stamped
  (``${now:...}``, the default) and another sweep already has it, because both started in the
  same second, this sweep takes ``<time>-2`` (then ``-3``, ...). A folder given explicitly
  (``hydra.sweep.dir=...``) is used as given, so a sweep can be resumed in place.
- the ``job_dirname`` resolver (``hydra.sweep.subdir: ${job_dirname:${hydra.job.override_dirname}}``)
  makes one folder name out of a job's overrides: a ``/`` in a value (a path) becomes ``%2F``
  instead of nesting folders, no overrides gives ``defaults``, and a name too long for the file
  system is shortened with a hash of the whole.

Importing this module registers the resolver; it imports nothing heavy (a sweep's workers
import it when they unpickle the callback, before they resolve their folder).
"""

from __future__ import annotations

import hashlib
import logging
from itertools import count
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)

MAX_NAME = 200  # bytes; file systems allow 255


def job_dirname(override_dirname: str) -> str:
    """One folder name for a job's ``hydra.job.override_dirname``."""
    name = str(override_dirname).replace("%", "%25").replace("/", "%2F")
    if not name:
        return "defaults"
    if len(name.encode()) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name.encode()[: MAX_NAME - 12].decode(errors="ignore") + "-" + digest
    return name


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)


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


register_resolvers()
