"""watch() in a plain training loop: the same tags as the trainer, values equal to a float64 untied
replay written here, the scale acting on the steps that log nothing, a wrapper's forward called."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import read_events
from experiments import watch
from experiments.errors import ConfigError, UseNotFound
from lens_models import VOCAB, TinyLM

STEPS, LR, SCALE = 10, 0.5, 0.5


class Wrapper(nn.Module):
    """What a LightningModule is to the model: its forward is the one the loop calls."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, VOCAB, (8,), generator=g), torch.randint(0, VOCAB, (8,), generator=g))
            for _ in range(STEPS)]


def replay(model):
    """Float64 SGD with the output use an untied leaf scaled by SCALE: (weights after, per-step use norms)."""
    e = model.wte.weight.detach().clone().double()
    m, b = model.mix.weight.detach().clone().double(), model.mix.bias.detach().clone().double()
    norms = []
    for x, y in batches():
        e_in, e_out, mw, mb = (t.clone().requires_grad_() for t in (e, e, m, b))
        h = torch.tanh(F.embedding(x, e_in) @ mw.T + mb)
        F.cross_entropy(h @ e_out.T, y).backward()
        g_in, g_out = e_in.grad, SCALE * e_out.grad
        norms.append((g_in.norm().item(), g_out.norm().item(), (g_in + g_out).norm().item()))
        e, m, b = e - LR * (g_in + g_out), m - LR * mw.grad, b - LR * mb.grad
    return {"wte.weight": e, "mix.weight": m, "mix.bias": b}, norms


def test_watch_in_a_plain_loop_equals_the_untied_replay(tmp_path):
    torch.manual_seed(0)
    model = TinyLM().double()
    expected, norms = replay(model)
    loop = Wrapper(model)  # the loop calls the wrapper; the lens watches the model inside it
    lens = watch(model, log_dir=tmp_path, every=3, grad_scale={"wte.weight@TinyLM": SCALE})
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for step, (x, y) in enumerate(batches(), start=1):
        loss = F.cross_entropy(loop(x), y)
        loss.backward()
        lens.step(step, loss)
        optimizer.step()
        optimizer.zero_grad()
    last = lens.uses()
    lens.close()

    for name, want in expected.items():  # the scale acted on every step, logged or not
        torch.testing.assert_close(dict(model.named_parameters())[name], want, rtol=1e-10, atol=1e-12)
    assert list(last["wte.weight"]) == ["wte.weight", "wte.weight@TinyLM"]
    acc = read_events(tmp_path)
    logged = [1, 3, 6, 9]
    for tag, k in (("tied/wte.weight/use/wte.weight/grad_norm", 0), ("tied/wte.weight/use/wte.weight@TinyLM/grad_norm", 1),
                   ("tied/wte.weight/grad_norm", 2)):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == logged, tag
        assert [e.value for e in events] == pytest.approx([norms[s - 1][k] for s in logged], rel=1e-5), tag
    assert [e.step for e in acc.Scalars("loss/train")] == logged
    norm_after = acc.Scalars("param_norm/mix.weight")  # written after the update of its step
    assert norm_after[-1].step == 9
    assert acc.Tags()["tensors"]  # the text summaries and the custom-scalars layout


def test_watch_refuses_what_it_cannot_see(tmp_path):
    model = TinyLM()
    with pytest.raises(ConfigError, match="no signal named nope"):
        watch(model, tmp_path, signals=["nope"])
    lens = watch(model, tmp_path / "b", every=1, grad_scale={"head.weight": 2.0})
    loss = model(torch.randint(0, VOCAB, (4,))).sum()
    loss.backward()
    with pytest.raises(UseNotFound, match=r"'head.weight' matched no use.*wte.weight, mix.weight, mix.bias, "
                                          r"wte.weight@TinyLM"):
        lens.step(1, loss)
    lens.close()
    with pytest.raises(ValueError, match="armed for step 2"):
        lens2 = watch(model, tmp_path / "c", every=1)
        model(torch.randint(0, VOCAB, (4,))).sum().backward()
        lens2.step(1)
        lens2.step(5)
    lens2.close()


def test_a_compiled_model_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match=r"compiled \(torch.compile\).*model._orig_mod.*lens.due\(step\)"):
        watch(torch.compile(TinyLM()), tmp_path)


def test_trainer_compile_with_grad_scale_is_refused(make_cfg, tmp_path):
    from experiments.training import train

    cfg = make_cfg(["model=tied", "trainer.compile=true", "+model.grad_scale={2.weight:0.5}"])
    with pytest.raises(ConfigError, match="trainer.compile=true with model.grad_scale"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "weights_init.pt").exists()  # refused before anything is written


@pytest.mark.slow
def test_trainer_compile_logs_what_the_eager_run_logs(make_cfg, tmp_path):
    """trainer.compile=true: the steps that log run eagerly (the lens sees every use), the others compiled; the
    logged values equal an eager run's (to rounding: compiled kernels may add in another order)."""
    from experiments.training import train

    args = ["model=tied_lm", "data=zipf_text", "data.vocab=60", "data.n_train=640", "data.n_val=64",
            "trainer.epochs=2", "telemetry.loss.every=4", "telemetry.tied.every=4", "telemetry.param_norm.every=4",
            "telemetry.grad_norm.every=4", "telemetry.update_ratio.every=4", "telemetry.activations.every=4",
            "telemetry.histograms.enabled=false"]
    train(make_cfg(args), tmp_path / "eager")
    train(make_cfg([*args, "trainer.compile=true"]), tmp_path / "compiled")
    eager, compiled = read_events(tmp_path / "eager"), read_events(tmp_path / "compiled")
    tags = eager.Tags()["scalars"]
    assert "tied/0.weight/use/5.weight/grad_norm" in tags and set(compiled.Tags()["scalars"]) == set(tags)
    for tag in tags:
        want, got = eager.Scalars(tag), compiled.Scalars(tag)
        assert [e.step for e in got] == [e.step for e in want], tag
        assert [e.value for e in got] == pytest.approx([e.value for e in want], rel=1e-4, abs=1e-6, nan_ok=True), tag


def test_watch_with_two_passes_a_step_and_no_loss(tmp_path):
    """Gradient accumulation: both passes' uses add up under one name each, every activation is one point a
    step (its statistics over both passes); and with no loss given, the first step logs too."""
    torch.manual_seed(0)
    model = TinyLM().double()
    (x1, y1), (x2, y2) = batches()[:2]
    with torch.no_grad():
        mixed = torch.cat([model.mix(model.wte(x1)), model.mix(model.wte(x2))])
    lens = watch(model, tmp_path, every=1)  # (the loss signal is on: dropped at step 1, none given)
    for step in (1, 2):
        for x, y in ((x1, y1), (x2, y2)):  # two micro-batches a step
            (F.cross_entropy(model(x), y) / 2).backward()
        lens.step(step)
        if step == 1:
            uses = lens.uses()["wte.weight"]
            assert list(uses) == ["wte.weight", "wte.weight@TinyLM"]
            torch.testing.assert_close(sum(uses.values()), model.wte.weight.grad)
        model.zero_grad()
    lens.close()
    acc = read_events(tmp_path)
    assert [e.step for e in acc.Scalars("tied/wte.weight/use/wte.weight@TinyLM/grad_norm")] == [1, 2]
    mean, std = acc.Scalars("act/mix/mean"), acc.Scalars("act/mix/std")
    assert [e.step for e in mean] == [1, 2] and [e.step for e in std] == [1, 2]
    assert mean[0].value == pytest.approx(mixed.mean().item(), rel=1e-5, abs=1e-7)
    assert std[0].value == pytest.approx(mixed.std().item(), rel=1e-5)


def test_watch_without_a_loss_logs_the_first_step_too(tmp_path):
    """lens.step(step) with no loss drops the loss signal at step 1: what else is due at step 1 (the
    initial state) is still logged."""
    torch.manual_seed(0)
    model = TinyLM()
    lens = watch(model, tmp_path, every=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step, (x, y) in enumerate(batches()[:4], start=1):
        F.cross_entropy(model(x), y).backward()
        lens.step(step)
        if step == 1:
            assert list(lens.uses()["wte.weight"]) == ["wte.weight", "wte.weight@TinyLM"]
        optimizer.step()
        optimizer.zero_grad()
    lens.close()
    acc = read_events(tmp_path)
    assert [e.step for e in acc.Scalars("tied/wte.weight/grad_norm")] == [1, 2, 4]
    assert "loss/train" not in acc.Tags()["scalars"]
