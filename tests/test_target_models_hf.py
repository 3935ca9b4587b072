"""Hugging Face models from their configs (conf/model/hf_gpt2.yaml, hf_albert.yaml; nothing downloaded),
trained through the real CLI: the output rule, ties found by name, init, freeze, inspection and resume.
Each run imports transformers in a fresh process: slow."""

import math
import shutil

import pytest
import torch
from conftest import read_events, run_cli

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

DATA = ["data=zipf_text", "data.vocab=64", "data.n_train=640", "data.n_val=128", "trainer.epochs=2",
        "optim=adam", "optim.lr=0.01"]
MODELS = {  # model -> (the embedding, the head tied to it, a parameter to freeze, a LayerNorm gain, a matrix)
    "hf_gpt2": ("transformer.wte.weight", "lm_head.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
                "transformer.h.0.attn.c_attn.weight"),
    "hf_albert": ("albert.embeddings.word_embeddings.weight", "predictions.decoder.weight",
                  "albert.embeddings.position_embeddings.weight", "albert.embeddings.LayerNorm.weight",
                  "albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight"),
}


@pytest.fixture(scope="module", params=list(MODELS))
def hf_run(request, tmp_path_factory):
    model = request.param
    frozen = MODELS[model][2]
    run = tmp_path_factory.mktemp(model) / "run"
    result = run_cli([f"model={model}", *DATA, "init=xavier", f"trainer.freeze=[{frozen}]", f"hydra.run.dir={run}"],
                     timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return model, run


def test_trains_through_the_cli_with_its_tie_seen(hf_run):
    model, run = hf_run
    embed, head = MODELS[model][:2]
    events = read_events(run)
    losses = [e.value for e in events.Scalars("loss/train")]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    val = events.Scalars("loss/val")
    assert [e.step for e in val] == [10, 20] and val[-1].value < math.log(64)  # better than uniform guessing
    ties = events.Tensors("ties/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"| {embed} | {embed}, {head} |" in ties
    assert f"tied/{embed}/use/{head}/grad_norm" in events.Tags()["scalars"]


def test_init_and_freeze_act_on_its_parameters(hf_run):
    model, run = hf_run
    embed, _, frozen, gain, matrix = MODELS[model]
    init = torch.load(run / "weights_init.pt", weights_only=True)
    final = torch.load(run / "weights_final.pt", weights_only=True)["state_dict"]
    assert embed in init["tie_manifest"]
    start = init["state_dict"]
    assert torch.equal(start[frozen], final[frozen]) and not torch.equal(start[embed], final[embed])
    w = start[matrix]
    bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))  # Xavier-uniform, symmetric in fan-in and fan-out
    assert 0.9 * bound < w.abs().max() <= bound
    assert torch.equal(start[gain], torch.ones_like(start[gain]))  # init=xavier leaves 1-D gains as they were


def test_inspecting_the_run_needs_transformers_allowed(hf_run):
    model, run = hf_run
    refused = run_cli([f"run={run}"], script="scripts/inspect_params.py")
    assert refused.returncode == 1 and "refused to run 'transformers." in refused.stderr
    allowed = run_cli([f"run={run}", "allow_targets=transformers.*", "compare=init"],
                      script="scripts/inspect_params.py")
    assert allowed.returncode == 0, allowed.stderr
    embed, head, frozen = MODELS[model][:3]
    row = next(line for line in allowed.stdout.splitlines() if line.startswith(f"{embed} "))
    assert f"{embed}, {head}" in row
    frozen_row = next(line for line in allowed.stdout.splitlines() if line.startswith(f"{frozen} "))
    assert " False " in frozen_row


def test_resumes_from_its_checkpoint(hf_run, tmp_path):
    model, run = hf_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    result = run_cli([f"model={model}", *DATA, "init=xavier", f"trainer.freeze=[{MODELS[model][2]}]",
                      "trainer.epochs=3", "trainer.resume=auto", f"hydra.run.dir={copy}"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout + result.stderr
    assert [e.step for e in read_events(copy).Scalars("loss/val")] == [10, 20, 30]
