"""LensCallback in a real lightning.Trainer: a tied model inside a LightningModule, gradient accumulation,
values equal to a float64 untied replay written here, the scale acting on the steps that log nothing."""

import functools

import pytest
import torch
import torch.nn.functional as F

from conftest import read_events, run_cli
from lens_models import VOCAB, TinyLM
from experiments.errors import ConfigError

pytestmark = pytest.mark.slow  # importing Lightning takes seconds (here, not when the default suite collects)

STEPS, ACCUM, BATCH, LR, SCALE = 10, 2, 8, 0.5, 0.5
EPOCH = 5  # optimizer steps an epoch: 2 epochs
LOGGED = [1, 3, 6, 9, 10]  # every 3, the first and the last (max_steps)


@functools.lru_cache(maxsize=None)
def lightning():
    """Lightning, the callback and the LightningModules of these tests (imported when a test runs)."""
    pl = pytest.importorskip("lightning.pytorch")
    from experiments.lightning_callback import LensCallback

    class Lit(pl.LightningModule):
        """The case issue 21 names: Lightning calls training_step, which calls the model inside."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR)

    class TwoOptimizers(Lit):
        """A GAN-style module: manual optimization, two optimizers."""

        def __init__(self, model):
            super().__init__(model)
            self.automatic_optimization = False

        def training_step(self, batch, _):
            for optimizer in self.optimizers():
                self.manual_backward(super().training_step(batch, _))
                optimizer.step()
                optimizer.zero_grad()

        def configure_optimizers(self):
            return [torch.optim.SGD(self.model.wte.parameters(), lr=LR),
                    torch.optim.SGD(self.model.mix.parameters(), lr=LR)]

    return pl, LensCallback, Lit, TwoOptimizers


def data(same=False):
    """An epoch of micro-batches; ``same``: all of them the first one."""
    g = torch.Generator().manual_seed(1)
    n = (1 if same else EPOCH * ACCUM) * BATCH
    x, y = torch.randint(0, VOCAB, (n,), generator=g), torch.randint(0, VOCAB, (n,), generator=g)
    return (x.repeat(EPOCH * ACCUM), y.repeat(EPOCH * ACCUM)) if same else (x, y)


def replay(model, same=False):
    """Float64 SGD over the same micro-batches (each loss / ACCUM), the output use an untied leaf scaled by
    SCALE: (weights after, per-step (input use, output use, sum) norms and losses)."""
    e = model.wte.weight.detach().clone()
    m, b = model.mix.weight.detach().clone(), model.mix.bias.detach().clone()
    x_all, y_all = data(same)
    norms, losses = [], []
    for step in range(STEPS):
        e_in, e_out, mw, mb = (t.clone().requires_grad_() for t in (e, e, m, b))
        loss = 0.0
        for k in range(ACCUM):
            first = ((step % EPOCH) * ACCUM + k) * BATCH
            rows = slice(first, first + BATCH)
            h = torch.tanh(F.embedding(x_all[rows], e_in) @ mw.T + mb)
            part = F.cross_entropy(h @ e_out.T, y_all[rows]) / ACCUM
            part.backward()
            loss += part.item()
        g_in, g_out = e_in.grad, SCALE * e_out.grad
        norms.append((g_in.norm().item(), g_out.norm().item(), (g_in + g_out).norm().item()))
        losses.append(loss)
        e, m, b = e - LR * (g_in + g_out), m - LR * mw.grad, b - LR * mb.grad
    return {"wte.weight": e, "mix.weight": m, "mix.bias": b}, norms, losses


def fit(callback, model, ckpt_path=None, same=False, **trainer_args):
    pl, _, Lit, _ = lightning()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data(same)), batch_size=BATCH)
    settings = dict(accelerator="cpu", devices=1, max_steps=STEPS, accumulate_grad_batches=ACCUM, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = pl.Trainer(callbacks=[callback], **{**settings, **trainer_args})
    trainer.fit(Lit(model), loader, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("module,prefix,head", [(None, "model.", "model.wte.weight@model"),
                                                ("model", "", "wte.weight@TinyLM")])
def test_lightning_fit_equals_the_untied_replay(tmp_path, module, prefix, head):
    """Watching the LightningModule (whose training_step, not forward, Lightning calls) or the model inside."""
    torch.manual_seed(0)
    model = TinyLM().double()
    expected, norms, losses = replay(model)
    _, LensCallback, _, _ = lightning()
    callback = LensCallback(tmp_path, every=3, grad_scale={head: SCALE}, module=module)
    trainer = fit(callback, model)
    assert trainer.global_step == STEPS

    for name, want in expected.items():  # the scale acted on every step, logged or not
        torch.testing.assert_close(dict(model.named_parameters())[name], want, rtol=1e-10, atol=1e-12)
    assert list(callback.lens.uses()[f"{prefix}wte.weight"]) == [f"{prefix}wte.weight", head]
    acc = read_events(tmp_path)
    param = f"{prefix}wte.weight"
    for tag, k in ((f"tied/{param}/use/{param}/grad_norm", 0), (f"tied/{param}/use/{head}/grad_norm", 1),
                   (f"tied/{param}/grad_norm", 2)):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == LOGGED, tag
        assert [e.value for e in events] == pytest.approx([norms[s - 1][k] for s in LOGGED], rel=1e-5), tag
    loss = acc.Scalars("loss/train")  # the mean of the steps since the last point (the micro-batches summed)
    assert [e.step for e in loss] == LOGGED
    assert loss[0].value == pytest.approx(losses[0], rel=1e-6)
    assert loss[1].value == pytest.approx((losses[1] + losses[2]) / 2, rel=1e-6)
    assert [e.step for e in acc.Scalars(f"param_norm/{prefix}mix.weight")] == LOGGED  # after each update


def test_a_resumed_fit_logs_on_from_its_checkpoint(tmp_path):
    """Stopped at step 3 (a checkpoint) and resumed from it: the steps after it are logged once, with the values
    of the uninterrupted replay, the first loss point averaging steps 4 to 6 (the lens's state came back). Every
    micro-batch is the same one here: Lightning restarts the data of a resumed epoch from its start."""
    torch.manual_seed(0)
    model = TinyLM().double()
    expected, norms, losses = replay(model, same=True)
    _, LensCallback, _, _ = lightning()
    scale = {"model.wte.weight@model": SCALE}
    trainer = fit(LensCallback(tmp_path / "lens", every=3, grad_scale=scale), model, same=True, max_steps=3)
    trainer.save_checkpoint(tmp_path / "step3.ckpt")
    resumed = TinyLM().double()  # (the checkpoint gives its weights)
    fit(LensCallback(tmp_path / "lens", every=3, grad_scale=scale), resumed, same=True, ckpt_path=tmp_path / "step3.ckpt")

    for name, want in expected.items():
        torch.testing.assert_close(dict(resumed.named_parameters())[name], want, rtol=1e-10, atol=1e-12)
    acc = read_events(tmp_path / "lens")
    events = acc.Scalars("tied/model.wte.weight/use/model.wte.weight@model/grad_norm")
    assert [e.step for e in events] == LOGGED
    assert [e.value for e in events] == pytest.approx([norms[s - 1][1] for s in LOGGED], rel=1e-5)
    loss = acc.Scalars("loss/train")
    assert [e.step for e in loss] == LOGGED
    assert [e.value for e in loss] == pytest.approx([losses[0], sum(losses[1:3]) / 2, sum(losses[3:6]) / 3,
                                                     sum(losses[6:9]) / 3, losses[9]], rel=1e-6)


def test_lightning_refuses_what_it_cannot_log(tmp_path):
    pl, LensCallback, Lit, TwoOptimizers = lightning()
    model = TinyLM()
    with pytest.raises(ConfigError, match=r"module='head'\): Lit has no module there. Its modules: model"):
        fit(LensCallback(tmp_path / "a", module="head"), model)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data()), batch_size=BATCH)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[LensCallback(tmp_path / "b")])
    with pytest.raises(ConfigError, match="has 2 optimizers; the lens steps once per optimizer step of one"):
        trainer.fit(TwoOptimizers(model), loader)
    lit = Lit(model)
    lit.model = torch.compile(model)  # (compiled lazily: nothing is compiled here)
    with pytest.raises(ConfigError, match="the module 'model' inside this model is compiled"):
        fit(LensCallback(tmp_path / "c"), lit.model)
    with pytest.raises(ConfigError, match="no signal named nope"):
        LensCallback(tmp_path / "d", signals=["nope"])


def test_the_documented_example_runs(tmp_path):
    """docs/examples/lightning_lens.py (shown on docs/lens/callbacks.md), as a user runs it."""
    lightning()  # (skipped without Lightning)
    result = run_cli([str(tmp_path)], script="docs/examples/lightning_lens.py", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "{'model.wte.weight': ['model.wte.weight', 'model.wte.weight@model']}" in result.stdout
    acc = read_events(tmp_path)
    assert [e.step for e in acc.Scalars("tied/model.wte.weight/use/model.wte.weight@model/grad_norm")] == \
        [1, *range(10, 101, 10)]
    loss = acc.Scalars("loss/train")
    assert loss[-1].value < loss[0].value / 2  # it learns
