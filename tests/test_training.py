"""The loop's own options, in-process: gradient clipping and the total gradient norm it logs."""

import pytest
import torch

from conftest import read_events
from experiments.config import compose_config
from experiments.errors import ConfigError
from experiments.training import train


def test_clip_grad_norm_bounds_each_sgd_step_and_logs_the_norm_before_clipping(tmp_path):
    """Full-batch SGD, one step: the weights move by exactly lr * clip in total, and grad_norm/total
    is the unclipped norm of all gradients (the norm of the per-parameter norms)."""
    lr, clip = 0.1, 0.01
    cfg = compose_config(["model=tied", "data.n_train=64", "data.batch_size=64", "trainer.epochs=1",
                          f"optim.lr={lr}", f"trainer.clip_grad_norm={clip}"])
    train(cfg, tmp_path)
    init = torch.load(tmp_path / "weights_init.pt", weights_only=True)["state_dict"]
    final = torch.load(tmp_path / "weights_final.pt", weights_only=True)["state_dict"]
    unique = ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]
    moved = torch.stack([(final[k] - init[k]).norm() for k in unique]).norm().item()
    assert moved == pytest.approx(lr * clip, rel=1e-4)
    acc = read_events(tmp_path)
    total = acc.Scalars("grad_norm/total")[0].value
    per_param = torch.tensor([acc.Scalars(f"grad_norm/{k}")[0].value for k in unique])
    assert total == pytest.approx(per_param.norm().item(), rel=1e-5) and total > 10 * clip  # before clipping


def test_clip_must_be_positive():
    with pytest.raises(ConfigError, match="trainer.clip_grad_norm=0.0: must be a positive norm"):
        train(compose_config(["trainer.clip_grad_norm=0"]), "/nonexistent-never-written")
