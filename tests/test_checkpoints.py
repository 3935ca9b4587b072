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
