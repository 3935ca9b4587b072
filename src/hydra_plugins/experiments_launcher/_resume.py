"""Where a sweep job lands and the command that resumes its sweep, worked out in the sweep's own process
(the launchers' messages): the job's config composed as the job composes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Tuple

from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict


def job_dir_and_resume_command(launcher: Any, overrides: List[str], idx: int) -> Tuple[Path, str]:
    """The folder of the job ``overrides`` (number ``idx``) of ``launcher``'s sweep, and the command that
    resumes the sweep (``failures.resume_command``: the sweep's command line in its folder with
    ``trainer.resume=auto``)."""
    from experiments.failures import resume_command

    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(config.hydra.job):
        config.hydra.job.num = idx
    hydra = HydraConfig.instance()
    saved = hydra.cfg
    hydra.set_config(config)
    try:
        job_dir = Path(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
        return job_dir, resume_command(job_dir)
    finally:
        hydra.cfg = saved
