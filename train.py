"""Build, initialize, train and log one experiment: ``python train.py model=tied init=xavier``."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.config import register_configs
from experiments.training import train

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    runtime = HydraConfig.get().runtime
    return train(cfg, runtime.output_dir, dict(runtime.choices))


if __name__ == "__main__":
    main()
