"""One run folder for all the processes of a distributed run.

Under torchrun every process runs ``train.py`` and so composes its own config, with its own
time-stamped ``hydra.run.dir``. :class:`DistributedRun` (a Hydra callback listed in
``conf/config.yaml``) opens the process group before Hydra creates any folder; rank 0 checks its
folder (as ``run_folder.RunFolderCheck`` does for one process) and every rank takes rank 0's
folder and verdict. Ranks other than 0 write nothing there (:func:`quiet_rank`: no ``.hydra/``, no
log file; their console shows warnings and errors, marked with their rank). The Slurm launcher
applies :func:`quiet_rank` to the tasks of a multi-task job, whose folder is the sweep's anyway.

A sweep (``-m``) under torchrun is refused: sweep with ``hydra/launcher=cluster`` and
``hydra.launcher.tasks_per_node`` instead, each job a distributed run.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from . import distributed
from .errors import ExperimentError
from .run_folder import check_folder

log = logging.getLogger(__name__)


def quiet_rank(config: DictConfig, rank: int) -> None:
    """Hydra settings of a rank other than 0: no ``.hydra/`` and no log file in the run folder (rank 0 writes
    them), warnings and errors on the console, marked with the rank."""
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.output_subdir = None
        logging_cfg = config.hydra.job_logging
        handlers = logging_cfg.get("handlers") or {}
        files = [name for name, handler in handlers.items() if "filename" in handler]
        for name in files:
            del handlers[name]
        if "root" in logging_cfg:
            logging_cfg.root.handlers = [h for h in logging_cfg.root.get("handlers", []) if h not in files]
            logging_cfg.root.level = "WARNING"
        for formatter in (logging_cfg.get("formatters") or {}).values():
            if "format" in formatter:
                formatter.format = f"[rank {rank}]" + formatter.format


def _exit(error: ExperimentError, rank: int) -> None:
    if rank == 0:
        log.error("%s: %s", type(error).__name__, error)
    sys.exit(error.exit_code)


class DistributedRun(Callback):
    """Under torchrun: the process group, and rank 0's run folder for every rank (see the module docstring)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        where = distributed.launch()
        if where is None:
            return
        trainer = config.trainer
        try:
            group = distributed.start(trainer.distributed.backend, trainer.device, trainer.distributed.timeout_s)
        except ExperimentError as error:
            _exit(error, where.rank)
            return
        verdict = [None, None]  # rank 0's folder, and why it cannot be used
        if group.rank == 0:
            folder = str(config.hydra.run.dir)
            try:
                check_folder(Path(folder), trainer.resume)
                verdict = [folder, None]
            except ExperimentError as error:
                verdict = [folder, error]
        dist.broadcast_object_list(verdict, src=0)
        folder, problem = verdict
        if problem is not None:
            distributed.stop()
            _exit(problem, group.rank)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = folder
        if group.rank:
            quiet_rank(config, group.rank)
        else:
            log.info("%d processes (%s), one run folder: %s", group.world, group.backend, folder)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        where = distributed.launch()
        if where is not None and where.launcher != "slurm":
            if where.rank == 0:
                log.error("ConfigError: a sweep (-m) under torchrun is not supported: torchrun runs one run in "
                          "%d processes. Sweep with one process per job (python train.py -m ...), or with "
                          "hydra/launcher=cluster hydra.launcher.tasks_per_node=%d, each job a distributed run.",
                          where.world, where.world)
            sys.exit(1)
