"""LensTrainerCallback in a real transformers.Trainer: a tiny GPT-2 built from its config (nothing downloaded),
gradient accumulation and clipping, values equal to a float64 untied twin trained here, the scale acting on
the steps that log nothing."""

import math

import pytest
import torch

from conftest import read_events, run_cli
from experiments.errors import ConfigError

pytestmark = pytest.mark.slow  # importing the Trainer takes seconds (here, not when the default suite collects)


def hf():
    """transformers and the callback (imported when a test runs; the Trainer needs accelerate)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from experiments.transformers_callback import LensTrainerCallback

    return transformers, LensTrainerCallback

VOCAB, CONTEXT, EXAMPLES, BATCH, ACCUM, STEPS, LR, CLIP, SCALE = 32, 8, 8, 4, 2, 6, 0.5, 0.25, 0.5
LOGGED = [1, 2, 4, 6]  # every 2, the first and the last
WTE, HEAD = "transformer.wte.weight", "lm_head.weight"


def gpt2(tied=True):
    transformers, _ = hf()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=CONTEXT,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=tied)
    return transformers.GPT2LMHeadModel(config).double()


def tokens():
    return torch.randint(0, VOCAB, (EXAMPLES, CONTEXT), generator=torch.Generator().manual_seed(1))


def labels(x):
    """The first position is no target (-100): however a version of the Trainer counts the batch's targets
    (before or after the shift), it counts 7 a row, and the loss is the mean over them."""
    y = x.clone()
    y[:, 0] = -100
    return y


def replay(model):
    """An untied twin (float64): each step the full data (one epoch = one optimizer step here, so the order the
    Trainer shuffles in does not matter), the head's gradient scaled by SCALE and added to the embedding's,
    the total clipped to CLIP. Returns (the tied weights after, per-step (embedding use, head use, sum) norms and the clipping factor)."""
    twin = gpt2(tied=False)
    twin.load_state_dict(model.state_dict())
    params = dict(twin.named_parameters())
    norms, x = [], tokens()
    for _ in range(STEPS):
        twin.zero_grad()
        twin(input_ids=x, labels=labels(x)).loss.backward()
        grads = {n: p.grad for n, p in params.items() if n != HEAD}
        g_in, g_out = params[WTE].grad, SCALE * params[HEAD].grad
        grads[WTE] = g_in + g_out
        total = math.sqrt(sum(g.pow(2).sum().item() for g in grads.values()))
        clip = min(1.0, CLIP / (total + 1e-6))
        norms.append((g_in.norm().item(), g_out.norm().item(), grads[WTE].norm().item(), clip))
        with torch.no_grad():
            for name, g in grads.items():
                params[name] -= LR * clip * g
            params[HEAD].copy_(params[WTE])
    return {n: p.detach() for n, p in params.items() if n != HEAD}, norms


def train(tmp_path, callback, model, **args):
    transformers, _ = hf()
    x = tokens()
    data = [{"input_ids": row, "labels": y} for row, y in zip(x, labels(x))]
    settings = dict(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=BATCH,
                    gradient_accumulation_steps=ACCUM, learning_rate=LR, optim="sgd", lr_scheduler_type="constant",
                    max_grad_norm=CLIP, report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True,
                    disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=transformers.TrainingArguments(**{**settings, **args}),
                                   train_dataset=data, callbacks=[callback])
    trainer.train()
    return trainer


def test_trainer_equals_the_untied_twin(tmp_path):
    model = gpt2()
    expected, norms = replay(model)
    _, LensTrainerCallback = hf()
    callback = LensTrainerCallback(every=2, grad_scale={HEAD: SCALE})
    trainer = train(tmp_path, callback, model)
    assert trainer.state.global_step == STEPS and trainer.args.max_grad_norm == CLIP  # (restored)

    got = dict(model.named_parameters())
    assert model.lm_head.weight is got[WTE]  # (still tied)
    for name, want in expected.items():  # the scale and the clipping acted on every step, logged or not
        torch.testing.assert_close(got[name], want, rtol=1e-9, atol=1e-12)
    assert list(callback.lens.uses()[WTE]) == [WTE, HEAD]
    acc = read_events(tmp_path / "lens")  # the default: <output_dir>/lens
    for tag, k in ((f"tied/{WTE}/use/{WTE}/grad_norm", 0), (f"tied/{WTE}/use/{HEAD}/grad_norm", 1),
                   (f"tied/{WTE}/grad_norm", 2)):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == LOGGED, tag
        assert [e.value for e in events] == pytest.approx([norms[s - 1][k] for s in LOGGED], rel=1e-5), tag
    assert all(n[3] < 1 for n in norms)  # (the clipping acted: what is logged is the gradient before it)
    assert "loss/train" not in acc.Tags()["scalars"]  # the Trainer hands callbacks no loss


def test_trainer_refuses_what_it_cannot_log(tmp_path):
    _, LensTrainerCallback = hf()
    with pytest.raises(ConfigError, match="torch_compile=True: inside a compiled graph the lens sees no use"):
        train(tmp_path, LensTrainerCallback(), gpt2(), torch_compile=True)
    with pytest.raises(ConfigError, match="no signal named nope"):
        LensTrainerCallback(signals=["nope"])


def test_the_documented_example_runs(tmp_path):
    """docs/examples/transformers_lens.py (shown on docs/lens/callbacks.md), as a user runs it."""
    hf()  # (skipped without transformers)
    result = run_cli([str(tmp_path)], script="docs/examples/transformers_lens.py", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "{'transformer.wte.weight': ['transformer.wte.weight', 'lm_head.weight']}" in result.stdout
    acc = read_events(tmp_path / "lens")
    assert [e.step for e in acc.Scalars(f"tied/{WTE}/use/{HEAD}/grad_norm")] == [1, *range(10, 61, 10)]
