"""Bad input through the real CLI: a non-zero exit within seconds, a message naming the bad
key or value, and no half-written run folder."""

import time
from pathlib import Path
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


def test_a_sweep_job_folder_typed_unquoted_after_trainer_resume_is_taken_as_the_path(tmp_path):
    """Job folders are named by their overrides ('init=xavier,model=tied'): Hydra's grammar cannot read such a
    value unquoted (it stops at '=' or reads ',' as a sweep). The hand-typed command resumes the job, as the
    printed, quoted one does; a value that names nothing is the usual "no checkpoint at" paragraph."""
    from experiments.config import compose_config
    from experiments.failures import literal_resume_argument
    from experiments.training import train

    short = ["model=tied", "data.n_train=64", "data.n_val=32", "telemetry.histograms.enabled=false"]
    job = tmp_path / "sweep" / "init=xavier,model=tied"
    train(compose_config([*short, "init=xavier", "trainer.epochs=1"]), job)
    result = run_cli([*short, "init=xavier", "trainer.epochs=2", f"trainer.resume={job}",
                      f"hydra.run.dir={tmp_path / 'invocation'}"], timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"resuming from {job / 'checkpoints' / 'last.pt'} at step 2" in output
    assert torch.load(job / "checkpoints" / "last.pt", weights_only=True)["step"] == 4  # 2 epochs of 2 steps

    missing = f"{tmp_path}/other/lr=0.1,model=tied"
    assert literal_resume_argument(["train.py", f"trainer.resume={missing}", "a=b,c"]) == \
        ["train.py", f"trainer.resume='{missing}'", "a=b,c"]  # only trainer.resume is read literally
    assert literal_resume_argument(["train.py", "trainer.resume=auto", "+trainer.resume=x,y"]) == \
        ["train.py", "trainer.resume=auto", "+trainer.resume='x,y'"]  # a run takes one value: not a sweep
    assert literal_resume_argument(["train.py", "-m", "trainer.resume=x,y"])[-1] == "trainer.resume=x,y"  # a sweep
    assert literal_resume_argument(["train.py", "-m", f"trainer.resume={job}"])[-1] == f"trainer.resume='{job}'"
    assert literal_resume_argument(["train.py", "trainer.resume='a=b'"])[-1] == "trainer.resume='a=b'"  # quoted already
SMALL_TOKENS = "data=zipf_text data.vocab=50 data.n_train=64 data.n_val=16"
POINTED = {  # overrides -> the one paragraph in failure.txt: the real cause, named by its key
    "init=recurrent model=rnn init.gain=nan": "ConfigError: init.gain=nan: not a finite number. No config key takes "
                                              "NaN or an infinity",
    "model=tied_lm {tokens} +model.grad_scale={{0.weight:inf}}": "ConfigError: model.grad_scale.0.weight=inf: not a "
                                                                 "finite number.",
    "{tokens} model=tied_lm data.exponent=nan": "ConfigError: data.exponent=nan: not a finite number.",
    "model=tied_lm {tokens} model.out_features=7": "ConfigError: model=tied_lm does not fit data=zipf_text: its "
        "Embedding 0 has 7 rows (model.out_features=7), but the data's token ids go up to",
    "model=mlp data=digits model.out_features=3": "ConfigError: model=mlp does not fit data=digits: for a batch of 32 "
        "it outputs (32, 3), and the data needs (32, 10) (10 per example, data.num_outputs: its classes). "
        "model.out_features=3 sets the last layer's width",
    "model=rnn data=digits": "ConfigError: model=rnn reads data.context (in model.layers[1].steps), which data=digits "
                             "does not have: model=rnn needs data that has data.context (data=text, data=time_machine, "
                             "data=zipf_text).",
    "model=tied_lm data=digits": "ConfigError: model=tied_lm cannot take data=digits's input (a batch of (32, 64) "
        "torch.float32): model=tied_lm starts with an Embedding, which reads token ids, and data=digits gives "
        "torch.float32 features.",
    "data=text model=tied_lm data.path={root}/folder": "ConfigError: data.path={root}/folder: a folder, not a file.",
    "data=text model=tied_lm data.path={root}/fifo": "ConfigError: data.path={root}/fifo: a named pipe (FIFO), not a "
                                                     "regular file",
    "data=csv data.target=y data.path=/dev/zero": "ConfigError: data.path=/dev/zero: a character device, not a "
                                                  "regular file",
    "data=text model=tied_lm data.path={root}/dangling": "ConfigError: data.path={root}/dangling: a symbolic link to "
                                                         "{root}/gone, which does not exist.",
    "data=time_machine model=tied_lm data.root={root}/folder/file": "ConfigError: data.root={root}/folder/file: a "
                                                                    "file, not a folder.",
}


@pytest.fixture(scope="module")
def hostile_paths(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("paths")
    (root / "folder").mkdir()
    (root / "folder" / "file").write_text("text")
    os.mkfifo(root / "fifo")  # opened for reading, it would wait for a writer for ever
    (root / "dangling").symlink_to(root / "gone")
    return root


@pytest.mark.parametrize("overrides", list(POINTED))
def test_messages_point_at_the_real_cause(tmp_path, hostile_paths, overrides):
    """As train.py runs it: exit 1, one paragraph in failure.txt that names the key at fault and says what it is,
    nothing else written, within seconds (a FIFO is not opened, so nothing waits)."""
    from experiments.config import compose_config
    from experiments.failures import run_and_report
    from experiments.training import train

    args = overrides.format(tokens=SMALL_TOKENS, root=hostile_paths).split()
    run_dir, started = tmp_path / "run", time.perf_counter()
    with pytest.raises(SystemExit) as exited:
        run_and_report(train, compose_config(args), run_dir, {}, multirun=False)
    assert exited.value.code == 1 and time.perf_counter() - started < 10
    failure = (run_dir / "failure.txt").read_text()
    assert failure.startswith(POINTED[overrides].format(root=hostile_paths)), failure
    assert failure.count("\n") == 1 and "diverged" not in failure and "model=tied_lm or model=rnn" not in failure
    assert [p.name for p in run_dir.iterdir()] == ["failure.txt"]


def test_a_fifo_as_data_path_does_not_hang_the_cli(hostile_paths, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["data=text", "model=tied_lm", f"data.path={hostile_paths}/fifo", f"hydra.run.dir={run_dir}"],
                     timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "a named pipe (FIFO), not a regular file" in (run_dir / "failure.txt").read_text()


def test_ctrl_c_while_the_run_is_set_up_is_one_paragraph_with_the_resume_command(tmp_path, monkeypatch):
    """Ctrl-C before the first step (the training loop's own checkpointing stop is not armed yet): exit 130, no
    traceback, failure.txt with the command that continues the run."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # interrupt_helpers, for train.py
    run_dir = tmp_path / "run"
    layers = "model.layers=[{_target_: interrupt_helpers.CtrlCWhenBuilt}, {_target_: torch.nn.Linear, out_features: 1}]"
    result = run_cli(["model=mlp", layers, f"hydra.run.dir={run_dir}"], timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 130 and "Traceback" not in output, output
    failure = (run_dir / "failure.txt").read_text()
    assert failure.count("\n") == 1 and failure.startswith("Interrupted: stopped by Ctrl-C (SIGINT) outside the "
                                                           "training steps"), failure
    assert f"hydra.run.dir={run_dir} trainer.resume=auto" in failure.split("Resume with: ")[1]
    assert not (run_dir / "checkpoints").exists()


def test_ctrl_c_after_the_last_step_leaves_a_finished_run_finished(tmp_path):
    from experiments.failures import stopped_outside_steps

    (tmp_path / "weights_final.pt").write_bytes(b"the run finished")
    message = stopped_outside_steps(tmp_path)
    assert message.startswith("Interrupted: stopped by Ctrl-C") and "trainer.resume=auto" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights_final.pt"]  # not marked failed
    (tmp_path / "weights_final.pt").unlink()
    stopped_outside_steps(tmp_path)
    assert (tmp_path / "failure.txt").read_text().startswith("Interrupted: stopped by Ctrl-C")
