"""Weights on disk: atomic writes, data-only reads, ties kept."""

import os

import pytest
import torch

from experiments.checkpoints import load, load_weights, save_atomic, save_weights
from experiments.errors import CheckpointError
from experiments.models import build_model, materialize


def tied(make_cfg, seed):
    torch.manual_seed(seed)
    model = build_model(make_cfg(["model=tied"]).model)
    materialize(model, torch.rand(2, 4))
    return model


def test_weights_round_trip_keeps_ties(make_cfg, tmp_path):
    a, b = tied(make_cfg, 0), tied(make_cfg, 1)
    save_weights(a, tmp_path / "w.pt")
    manifest = load_weights(b, tmp_path / "w.pt")
    assert manifest == {"2.weight": ["2.weight", "4.weight"], "2.bias": ["2.bias", "4.bias"]}
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert b[2] is b[4]
    saved = torch.load(tmp_path / "w.pt", weights_only=True)
    assert saved["state_dict"]["2.weight"].data_ptr() == saved["state_dict"]["4.weight"].data_ptr()


def test_atomic_write_keeps_previous_file_on_failure(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom mid-write")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"step": 2, "bad": Unpicklable()}, path)
    assert load(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"w": torch.randn(100, 100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        load(path)
    with pytest.raises(CheckpointError, match="no such file"):
        load(tmp_path / "missing.pt")


class Payload:
    """Any class outside torch's allow-list: loading it would run code."""


class Runs:
    """Unpickling this runs a command."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload, named", [(Payload(), "test_checkpoints.Payload"), (Runs(), "system")])
def test_code_is_refused_and_said_to_be_code(tmp_path, payload, named):
    path = tmp_path / "evil.pt"
    torch.save({"x": payload}, path)
    with pytest.raises(CheckpointError) as caught:
        load(path)
    message = str(caught.value)
    assert f"{path}: refused: it names Python code" in message and named in message
    assert "truncated" not in message and "weights_only=False" not in message  # no advice to run it


def test_weights_of_another_model_are_named(make_cfg, tmp_path):
    save_weights(tied(make_cfg, 0), tmp_path / "w.pt")
    other = build_model(make_cfg(["model=mlp"]).model)
    materialize(other, torch.rand(2, 4))
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'w.pt'} does not fit this model: .*Unexpected key"):
        load_weights(other, tmp_path / "w.pt")


# --- a checkpoint's contents are checked before anything is restored ----------------------------

LM = ["model=tied_lm", "data=zipf_text", "data.n_train=128", "data.n_val=32", "data.vocab=20", "trainer.epochs=1",
      "optim.momentum=0.9", "telemetry.histograms.enabled=false"]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A finished tied_lm run (SGD with momentum: a buffer per parameter) and its last checkpoint."""
    from experiments.config import compose_config
    from experiments.training import train

    run_dir = tmp_path_factory.mktemp("lm") / "run"
    train(compose_config(LM), run_dir)
    return run_dir, load(run_dir / "checkpoints" / "last.pt")


def _tamper(state, change):
    import copy

    state = copy.deepcopy(state)
    change(state)
    return state


def _set_sd(name, value):
    return lambda s: s["state_dict"].__setitem__(name, value(s["state_dict"][name]))


def _set_rng(key, value):
    return lambda s: s["rng"].__setitem__(key, value)


def _set_momentum(value):
    return lambda s: s["optimizer"]["state"][0].__setitem__("momentum_buffer", value(s["optimizer"]["state"][0]["momentum_buffer"]))


TAMPERED = {  # what is changed -> the entry and what the message says of it
    "negative step": (lambda s: s.__setitem__("step", -100), "step is -100; it should be 0 or more"),
    "float step": (lambda s: s.__setitem__("step", 4.0), "step is 4.0 (float); it should be a whole number"),
    "batch beyond the epoch": (lambda s: s.update(step=10**9, batch_in_epoch=10**9),
                               "batch_in_epoch is 1000000000, but an epoch of this run has 2 batches"),
    "batch as a float": (lambda s: s.__setitem__("batch_in_epoch", 1e9), "batch_in_epoch is 1000000000.0 (float)"),
    "epoch 0": (lambda s: s.__setitem__("epoch", 0), "epoch is 0; it should be 1 or more"),
    "tied names differ": (_set_sd("5.weight", lambda t: t + 1),
                          "state_dict['0.weight'] and state_dict['5.weight'] hold different values, but in this model "
                          "they are one tied parameter"),
    "float16 weight": (_set_sd("2.weight", lambda t: t.half()),
                       "state_dict['2.weight'] is torch.float16, the model's is torch.float32"),
    "nan weight": (_set_sd("2.bias", lambda t: t * float("nan")), "state_dict['2.bias'] holds inf or nan"),
    "a list for a weight": (_set_sd("4.bias", lambda t: t.tolist()), "state_dict['4.bias'] is [")
    ,
    "rng of the wrong type": (_set_rng("torch", "abc"),
                              "rng['torch'] is 'abc'; it should be a torch.uint8 tensor of shape (5056,)"),
    "rng of the wrong dtype": (_set_rng("shuffle", torch.zeros(5056, dtype=torch.int64)), "rng['shuffle'] is a torch.int64"),
    "rng that is no state": (_set_rng("shuffle", torch.full((5056,), 255, dtype=torch.uint8)),
                             "rng['shuffle'] is not a random generator's state"),
    "float16 momentum": (_set_momentum(lambda t: t.half()),
                         "optimizer.state[0]['momentum_buffer'] is a torch.float16 tensor of shape (20, 32); its "
                         "parameter is a torch.float32 tensor of shape (20, 32)"),
    "momentum of another shape": (_set_momentum(lambda t: t[:3]), "optimizer.state[0]['momentum_buffer'] is a "
                                                                   "torch.float32 tensor of shape (3, 32)"),
    "a string momentum setting": (lambda s: s["optimizer"]["param_groups"][0].__setitem__("nesterov", "yes"),
                                  "optimizer.param_groups[0]['nesterov'] is 'yes'; this optimizer's is False"),
    "loss total as text": (lambda s: s["telemetry"].__setitem__("loss_total", "x"),
                           "telemetry['loss_total'] is 'x'; it should be a finite number"),
    "config as a number": (lambda s: s.__setitem__("config", 3), "config is 3; it should be the run's config"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_checkpoint_is_checked_entry_by_entry_before_anything_is_restored(lm_run, tmp_path, case):
    """Each altered entry is one CheckpointError paragraph naming the file and the entry; the run folder
    is left as it was (no event file, no weights, the checkpoint untouched)."""
    from experiments.config import compose_config
    from experiments.training import train

    run_dir, state = lm_run
    change, message = TAMPERED[case]
    folder = tmp_path / "run"
    last = folder / "checkpoints" / "last.pt"
    save_atomic(_tamper(state, change), last)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    with pytest.raises(CheckpointError) as caught:
        train(compose_config([*LM, "trainer.epochs=2", "trainer.resume=auto"]), folder)
    text = str(caught.value)
    assert text.startswith(f"{last}: ") and message in text and "\n" not in text, text
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before  # nothing written, nothing restored


def test_the_untouched_checkpoint_resumes(lm_run, tmp_path):
    """The same copy, unaltered, passes every check (what the cases above change is all that is wrong)."""
    from experiments.config import compose_config
    from experiments.training import train

    run_dir, state = lm_run
    folder = tmp_path / "run"
    save_atomic(state, folder / "checkpoints" / "last.pt")
    train(compose_config([*LM, "trainer.epochs=2", "trainer.resume=auto"]), folder)
    assert (folder / "weights_final.pt").is_file()


def test_weights_whose_tied_names_differ_are_refused_naming_both(lm_run, tmp_path):
    """load_weights (load_run, scripts/inspect_params.py) checks dtypes and ties the same way."""
    from experiments.config import compose_config
    from experiments.experiment import build_experiment

    run_dir, state = lm_run
    saved = load(run_dir / "weights_final.pt")
    saved["state_dict"]["5.weight"] = saved["state_dict"]["5.weight"].clone() * 2
    save_atomic(saved, tmp_path / "w.pt")
    model = build_experiment(compose_config(LM)).model
    with pytest.raises(CheckpointError, match=r"\['0.weight'\] and state_dict\['5.weight'\] hold different values"):
        load_weights(model, tmp_path / "w.pt")


def test_a_negative_step_through_the_cli_fails_at_once(lm_run, tmp_path):
    """It used to resume "at step -100" and spin with growing memory: now exit 1 within seconds, one paragraph
    naming the file and the entry, failure.txt."""
    import time

    from conftest import run_cli

    run_dir, state = lm_run
    folder = tmp_path / "run"
    save_atomic(_tamper(state, lambda s: s.__setitem__("step", -100)), folder / "checkpoints" / "last.pt")
    started = time.monotonic()
    result = run_cli([*LM, "trainer.epochs=2", f"hydra.run.dir={folder}", "trainer.resume=auto"], timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and time.monotonic() - started < 60, output
    assert "Traceback" not in output
    reason = (folder / "failure.txt").read_text()
    assert reason.startswith(f"CheckpointError: {folder / 'checkpoints' / 'last.pt'}: step is -100") and reason in output
    assert not list(folder.glob("events.out.tfevents.*")) and not (folder / "weights_final.pt").exists()
