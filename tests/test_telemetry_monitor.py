"""The monitor: signals run only on the steps they are due; fast paths equal plain arithmetic."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from experiments.config import telemetry_schema
from experiments.telemetry.monitor import Monitor
from experiments.telemetry.signals import FlatViews, fused_norms
from experiments.telemetry.monitor import cadences
from experiments.telemetry.summaries import hparam_values


@pytest.mark.parametrize("count", [4, 40])  # below FLAT_BELOW: _foreach_norm; above: one flat copy
def test_fused_norms_equal_per_tensor_norms(count):
    torch.manual_seed(0)
    shapes = [(3, 4), (7,), (2, 2, 2), (0,), (300, 300)]
    tensors = [torch.randn(*shapes[i % len(shapes)]) * (i + 1) for i in range(count)]
    tensors[1] = torch.randn(5, 6).t()  # not contiguous
    expected = torch.stack([torch.linalg.vector_norm(t.double()) for t in tensors]).float()
    torch.testing.assert_close(fused_norms(tensors), expected, rtol=2e-6, atol=0)
    assert fused_norms([]).numel() == 0
    flat = FlatViews([t for t in tensors if t.is_contiguous()])
    torch.testing.assert_close(flat.norms(), torch.stack([torch.linalg.vector_norm(t.double()) for t in flat.tensors]).float(),
                               rtol=2e-6, atol=0)
    before = flat.cat()
    for t in flat.tensors:
        t.mul_(2)  # the views follow in-place updates, as an optimizer's
    torch.testing.assert_close(flat.segment_norms(flat.cat() - before), flat.segment_norms(before))


def test_hparams_are_the_chosen_groups_and_what_the_command_line_set(make_cfg):
    cfg = make_cfg(["model=tied", "optim.lr=0.1", "trainer.epochs=2", "telemetry=all"])
    choices = {"model": "tied", "init": "default", "data": "synthetic", "optim": "sgd", "trainer": "default",
               "telemetry": "all", "hydra/launcher": "basic", "schema/data": "synthetic"}
    values = hparam_values(cfg, choices, ["model=tied", "optim.lr=0.1", "trainer.epochs=2", "hydra.run.dir=x"])
    assert values == {"model": "tied", "init": "default", "data": "synthetic", "optim": "sgd", "telemetry": "all",
                      "optim.lr": 0.1, "trainer.epochs": 2}


def test_hooks_exist_only_on_steps_that_log(tmp_path):
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(3, 4), shared, nn.ReLU(), shared, nn.Linear(4, 1))
    cfg = OmegaConf.structured(telemetry_schema())
    cfg.tied.every = cfg.activations.every = 2
    monitor = Monitor(tmp_path, model, cfg)

    def hooks():
        from torch.nn.modules import module as nn_module

        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) + \
            len(nn_module._global_forward_hooks) + len(nn_module._global_forward_pre_hooks)

    written = {}
    for step in (1, 2, 3):  # every signal logs step 1 (the initial state), then every 2: step 2, not 3
        monitor.before_forward(step)
        assert hooks() == (0 if step == 3 else 2 + 2)  # tied, activations: a global pre- and post-hook each
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


@pytest.mark.parametrize("total, expected", [
    (64, {"loss": 1, "param_norm": 2, "histograms": 13}),
    (100_000, {"loss": 1000, "param_norm": 2000, "activations": 4000, "histograms": 20_000}),
])
def test_default_cadences_give_about_a_set_number_of_points(make_cfg, total, expected):
    every = cadences(make_cfg([]).telemetry, total)
    assert {k: every[k] for k in expected} == expected
    points = {name: len({1, total} | set(range(n, total + 1, n))) for name, n in every.items()}
    assert 64 <= points["loss"] <= 102 and 33 <= points["param_norm"] <= 52 and 5 <= points["histograms"] <= 7
    explicit = cadences(make_cfg(["telemetry.loss.every=7"]).telemetry, total)
    assert explicit["loss"] == 7  # an explicit cadence wins


def test_every_signal_logs_the_first_and_the_last_step(make_cfg, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    cfg = make_cfg(["telemetry.param_norm.every=4", "telemetry.histograms.every=100"]).telemetry
    monitor = Monitor(tmp_path, model, cfg, total_steps=10)
    logged = []
    for step in range(1, 11):
        monitor.before_forward(step)
        loss = model(torch.randn(5, 3)).pow(2).mean()
        model.zero_grad()
        loss.backward()
        monitor.after_backward(step)
        logged.append((step, sorted({t.split("/")[0] for t in monitor.after_step(step, loss.item())}),
                       [type(s).name for s in monitor.due(step)]))
    monitor.close()
    by_step = {step: names for step, _, names in logged}
    assert "param_norm" in by_step[4] and "param_norm" in by_step[8] and "param_norm" not in by_step[9]
    assert "histograms" in by_step[1] and "histograms" in by_step[10] and "histograms" not in by_step[5]
    assert all(set(by_step[s]) == set(monitor.signals) for s in (1, 10))
    written = {step: prefixes for step, prefixes, _ in logged}  # what was written, not only what was due
    assert all("param_norm" in written[s] and "loss" in written[s] for s in (1, 4, 8, 10))
    assert "param_norm" not in written[9] and "param_norm" not in written[5]


def test_a_checkpoint_of_two_ranks_resumes_in_one_process_with_their_parts_combined(tmp_path):
    """A distributed checkpoint keeps each rank's part not yet reduced (its losses since the last reduction and
    its accuracy since the last point, each scaled so that the mean over ranks is the global value); one
    process resuming from it takes their mean, and logs what the two ranks would have."""
    cfg = OmegaConf.structured(telemetry_schema())
    cfg.loss.every = 4
    model = nn.Linear(2, 3)
    monitor = Monitor(tmp_path, model, cfg, classification=True, total_steps=8)
    state = {"loss_total": 10.0, "signals": {"loss": {"last_total": 6.0, "last_step": 2}},
             "ranks": [{"loss_local": 1.0, "signals": {"loss": {"acc": 0.5}}},
                       {"loss_local": 3.0, "signals": {"loss": {"acc": 1.5}}}]}
    monitor.load_state_dict(state)
    assert float(monitor.loss_total) == 12.0  # 10 + (1 + 3) / 2
    out, target = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), torch.tensor([1, 2])  # one of two right
    monitor.after_backward(4, torch.tensor(2.0, dtype=torch.float64), out, target)
    written = monitor.after_step(4)
    assert written["loss/train"] == pytest.approx((12.0 + 2.0 - 6.0) / 2)  # the steps since step 2
    assert written["acc/train"] == pytest.approx((1.0 + 0.5) / 2)  # (0.5 + 1.5) / 2 before, 0.5 now
    assert monitor.state_dict()["ranks"] == [{"loss_local": 0.0, "signals": {"loss": {"acc": None}}}]
    monitor.close()
