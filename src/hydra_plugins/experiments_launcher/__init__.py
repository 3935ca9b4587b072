"""The project's launchers for Hydra: ``hydra/launcher=cluster`` (Hydra's ``submitit_slurm`` that reports
while the sweep waits and records jobs that end without a result: ``_launcher``), and ``joblib`` and
``submitit_local`` as Hydra's plugins, whose sweeps stop cleanly on Ctrl-C or SIGTERM (``_stop``).

Hydra imports every module of the ``hydra_plugins`` namespace package when it starts, so this one
stays light: it registers the configs only where the Hydra plugins are installed
(``pip install -e ".[sweep]"``), and joblib and submitit themselves are imported only when a sweep is
launched. ``joblib`` and ``submitit_local`` are registered under Hydra's own names, replacing the
plugins' entries (:class:`LauncherConfigs`): every key of Hydra's launcher works as before, plus
``stop_grace_s``. Modules whose names start with ``_`` are not imported by Hydra's plugin scan.
"""

from dataclasses import dataclass

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin

try:
    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
except ImportError:  # no sweep extra: no submitit launchers to extend
    LocalQueueConf = SlurmQueueConf = None
try:
    from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
except ImportError:
    JobLibLauncherConf = None

STOP_GRACE_S = 120.0  # a stopped sweep waits this long for its running jobs' checkpoints, then kills them

if SlurmQueueConf is not None:
    from ._launcher import ClusterLauncher  # noqa: F401  (Hydra finds the plugin class here)
    from ._local import LocalLauncher  # noqa: F401

    @dataclass
    class ClusterQueueConf(SlurmQueueConf):
        """``submitit_slurm``'s settings and how the sweep reports while it waits."""

        _target_: str = "hydra_plugins.experiments_launcher._launcher.ClusterLauncher"
        progress_every_s: float = 60.0  # a progress line at least this often (and whenever the counts change)
        poll_every_s: float = 5.0  # how often squeue is asked about the sweep's jobs

    @dataclass
    class StoppableLocalQueueConf(LocalQueueConf):
        """``submitit_local``'s settings; a stopped sweep waits ``stop_grace_s`` for its jobs' checkpoints."""

        _target_: str = "hydra_plugins.experiments_launcher._local.LocalLauncher"
        stop_grace_s: float = STOP_GRACE_S

if JobLibLauncherConf is not None:
    from ._joblib import JoblibLauncher  # noqa: F401

    @dataclass
    class StoppableJobLibLauncherConf(JobLibLauncherConf):
        """joblib's settings; a stopped sweep waits ``stop_grace_s`` for its jobs' checkpoints."""

        _target_: str = "hydra_plugins.experiments_launcher._joblib.JoblibLauncher"
        stop_grace_s: float = STOP_GRACE_S


def register() -> None:
    """Store the launchers' configs (``joblib`` and ``submitit_local`` over the plugins' own)."""
    store = ConfigStore.instance()
    if SlurmQueueConf is not None:
        store.store(group="hydra/launcher", name="submitit_cluster", node=ClusterQueueConf, provider="experiments")
        store.store(group="hydra/launcher", name="submitit_local", node=StoppableLocalQueueConf,
                    provider="experiments")
    if JobLibLauncherConf is not None:
        store.store(group="hydra/launcher", name="joblib", node=StoppableJobLibLauncherConf, provider="experiments")


class LauncherConfigs(SearchPathPlugin):
    """Hydra's plugin scan runs every plugin module again, the joblib and submitit plugins' configs
    possibly after this one (the order of ``hydra_plugins``' folders on the path decides); Hydra asks
    its search-path plugins after the scan and before composing anything, so :func:`register` runs
    here again, last. The search path itself is left as it is."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        register()


register()
