"""The project's Slurm launcher for Hydra (``hydra/launcher=cluster``): Hydra's ``submitit_slurm`` that
reports while the sweep waits and records jobs that end without a result (see ``_launcher``).

Hydra imports every module of the ``hydra_plugins`` namespace package when it starts, so this one
stays light: it registers the config ``hydra/launcher/submitit_cluster`` (which
``conf/hydra/launcher/cluster.yaml`` builds on) only where hydra-submitit-launcher is installed
(``pip install -e ".[sweep]"``), and submitit itself is imported only when a sweep is launched.
Modules whose names start with ``_`` are not imported by Hydra's plugin scan.
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

try:
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
except ImportError:  # no sweep extra: no Slurm launcher to extend
    SlurmQueueConf = None

if SlurmQueueConf is not None:
    from ._launcher import ClusterLauncher  # noqa: F401  (Hydra finds the plugin class here)

    @dataclass
    class ClusterQueueConf(SlurmQueueConf):
        """``submitit_slurm``'s settings and how the sweep reports while it waits."""

        _target_: str = "hydra_plugins.experiments_launcher._launcher.ClusterLauncher"
        progress_every_s: float = 60.0  # a progress line at least this often (and whenever the counts change)
        poll_every_s: float = 5.0  # how often squeue is asked about the sweep's jobs

    ConfigStore.instance().store(group="hydra/launcher", name="submitit_cluster", node=ClusterQueueConf,
                                 provider="experiments")
