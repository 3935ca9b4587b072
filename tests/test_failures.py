"""Bad input through the real CLI: a non-zero exit within seconds, a message naming the bad
key or value, and no half-written run folder."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import run_cli

CASES = {  # overrides -> text the message must contain
    "model=nope": "model/nope",
    "model.widht=3": "widht",
    "trainer.epochs=abc": "epochs",
    "model.width=-3": "model.width=-3",
    "model=tied model.layers.2.body.0=sharde": "'sharde' is not declared under model.shared",
    "model=tied model.tie=[[2.weight,9.weight]]": "no parameter named '9.weight'",
    "model=tied model.tie=[[0.weight,2.weight]]": "cannot tie '0.weight' (8, 4) with '2.weight' (8, 8)",
    "init=xavier init.rules.0.fn=xavier_unifrom_": "xavier_unifrom_",
    "init=mixed init.rules.1.params=9.weight": "matches no parameter",
    "init=normal init.std=-0.5": "init.std=-0.5",
    "trainer.device=tpu": "trainer.device='tpu'",
    "data.batch_size=0": "data.batch_size=0",
    "model.activation=torch.nn.Relu": "torch.nn.Relu",
    "trainer.resume=/nonexistent/run": "trainer.resume=/nonexistent/run",
    "telemetry.loss.every=0": "telemetry.loss.every=0",
    "data=zipf_text data.n_train=200 data.n_val=50": "Token ids need a model that starts with an Embedding",
    "+model._target_=torch.nn.Identity": "model._target_: this model is a list of layers",  # not silently the mlp
    "+trainer.epoch=3": "trainer.epoch: TrainerConfig has no key 'epoch'",
    "model=custom model._target_=torch.nn.Embedding +model.num_embeddings=1000 +model.embedding_dim=4 data=zipf_text "
    "data.n_train=200 data.n_val=50": "the model's output has shape (64, 8, 4) for a batch of 64, which the next_token "
                                      "task cannot score",  # an output the task cannot use: not a traceback at step 1
    "model=custom model._target_=torch.zeros +model._args_=[3]": "model._target_=torch.zeros returned a torch.Tensor, "
                                                                 "not a torch.nn.Module",
    'trainer.freeze=["*"]': "trainer.freeze=['*']: freezes every parameter",
    "data=csv": "data=csv needs data.path, data.target",
    "data=csv data.path={root}/latin1.csv data.target=y": "not UTF-8 text (byte 0xe9 in row 2",
}
if not torch.cuda.is_available():
    CASES["trainer.device=cuda"] = "trainer.device=cuda: this machine has no CUDA device"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "latin1.csv").write_bytes("a,y\ncaf\u00e9,1\n".encode("latin-1"))

    def run(item):
        i, overrides = item
        run_dir = root / f"case{i}"
        started = time.perf_counter()
        result = run_cli([*overrides.format(root=root).split(), f"hydra.run.dir={run_dir}"], timeout=60)
        return overrides, (result, run_dir, time.perf_counter() - started)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, enumerate(CASES)))


@pytest.mark.parametrize("overrides", list(CASES))
def test_bad_input_is_named_and_nothing_half_written(results, overrides):
    result, run_dir, seconds = results[overrides]
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert CASES[overrides] in output, output
    assert "Traceback" not in output  # one paragraph, not a stack trace
    assert seconds < 30
    written = [p.name for p in run_dir.rglob("*") if p.is_file()] if run_dir.exists() else []
    assert not [n for n in written if n.startswith("events.out") or n.endswith(".pt")], written
    if run_dir.exists() and (run_dir / ".hydra").exists():  # our checks: the reason is kept
        assert CASES[overrides] in (run_dir / "failure.txt").read_text()


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr=nan"], "optim.lr=nan: the learning rate must be a positive finite number"),
    (["optim.lr=inf"], "optim.lr=inf: the learning rate must be a positive finite number"),
    (["optim.lr=-1"], "optim.lr=-1.0: the learning rate"),
    (["optim.lr=0"], "optim.lr=0.0: the learning rate"),
    (["optim.momentum=-1"], "optim.momentum=-1.0: must be a finite number, 0 or more"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1: must be"),
    (["optim=adam", "optim.betas=[0.9]"], "optim.betas=[0.9]: two numbers in [0, 1)"),
    (["optim=adam", "optim.betas=[0.9,1.5]"], "optim.betas=[0.9, 1.5]"),
    (["optim=adam", "optim.eps=0"], "optim.eps=0.0: must be a positive finite number"),
    (["trainer.epochs=-5"], "trainer.epochs=-5: must be 0 or more"),
    (["trainer.checkpoint_every=-3"], "trainer.checkpoint_every=-3: must be 0 or more"),
    (["trainer.resume_changes=maybe"], "trainer.resume_changes='maybe': use refuse"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, overrides, message):
    from experiments.config import compose_config
    from experiments.errors import ConfigError
    from experiments.training import train

    with pytest.raises(ConfigError) as caught:
        train(compose_config(overrides), tmp_path / "run")
    assert message in str(caught.value)
    assert not (tmp_path / "run").exists()
