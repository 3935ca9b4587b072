"""The monitor: signals run only on the steps they are due; fast paths equal plain arithmetic."""

import torch
from omegaconf import OmegaConf
from torch import nn

from experiments.config import telemetry_schema
from experiments.telemetry.monitor import Monitor
from experiments.telemetry.signals import fused_norms
from experiments.telemetry.summaries import flat_hparams


def test_fused_norms_equal_per_tensor_norms():
    tensors = [torch.randn(3, 4), torch.randn(7), torch.randn(2, 2, 2), torch.zeros(5)]
    fused = torch.stack(fused_norms(tensors))
    expected = torch.stack([torch.linalg.vector_norm(t) for t in tensors])
    torch.testing.assert_close(fused, expected)
    assert fused_norms([]) == []


def test_flat_hparams(make_cfg):
    cfg = make_cfg(["model=tied"])
    values = flat_hparams(cfg, {"model": "tied", "hydra/launcher": "basic"})
    assert values["model"] == "tied" and "hydra/launcher" not in values
    assert values["optim.lr"] == 0.03 and values["data.batch_size"] == 32 and values["model.width"] == 8
    assert not any(k.startswith(("telemetry", "model.shared", "optim._")) for k in values)


def test_hooks_exist_only_on_steps_that_log(tmp_path):
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(3, 4), shared, nn.ReLU(), shared, nn.Linear(4, 1))
    cfg = OmegaConf.structured(telemetry_schema())
    cfg.tied.every = cfg.activations.every = 2
    monitor = Monitor(tmp_path, model, cfg)

    def hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    written = {}
    for step in (1, 2, 3):  # every signal logs step 1 (the initial state), then every 2: step 2, not 3
        monitor.before_forward(step)
        assert hooks() == (0 if step == 3 else 3 + 5)  # tied: model, shared (pre, post); acts: model, 4 leaves
        loss = model(torch.randn(5, 3)).pow(2).mean()
        model.zero_grad()
        loss.backward()
        monitor.after_backward(step)
        written[step] = monitor.after_step(step, loss.item())
        assert hooks() == 0
    monitor.close()
    assert "tied/1.weight/use/3.weight/cos" in written[2] and "act/3/mean" in written[2]
    signals = lambda tags: {t for t in tags if t.startswith(("tied/", "act/"))}  # noqa: E731
    assert signals(written[1]) == signals(written[2])
    assert not any(t.startswith(("tied/", "act/")) for t in written[3])
