"""Build, initialize, train and log one experiment: ``python train.py model=tied init=xavier``."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from experiments.config import register_configs
from experiments.failures import literal_resume_argument, run_and_report
from experiments.training import train

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    return run_and_report(train, cfg, hydra_cfg.runtime.output_dir, dict(hydra_cfg.runtime.choices),
                          multirun=hydra_cfg.mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    sys.argv = literal_resume_argument(sys.argv)  # trainer.resume=<job folder>, whose name has '=' and ','
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C while Hydra composes the config (a run's own is in failure.txt)
        print("Interrupted (Ctrl-C).", file=sys.stderr)
        sys.exit(130)
