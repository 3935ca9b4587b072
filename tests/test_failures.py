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
}
if not torch.cuda.is_available():
    CASES["trainer.device=cuda"] = "trainer.device=cuda: this machine has no CUDA device"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")

    def run(item):
        i, overrides = item
        run_dir = root / f"case{i}"
        started = time.perf_counter()
        result = run_cli([*overrides.split(), f"hydra.run.dir={run_dir}"], timeout=60)
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
