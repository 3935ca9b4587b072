"""Fast paths compute what the straightforward ones do."""

import torch
from torch.utils.tensorboard import SummaryWriter

from conftest import read_events
from experiments.monitoring import ScalarWriter, flat_hparams, fused_norms


def test_fused_norms_equal_per_tensor_norms():
    tensors = [torch.randn(3, 4), torch.randn(7), torch.randn(2, 2, 2), torch.zeros(5)]
    fused = torch.stack(fused_norms(tensors))
    expected = torch.stack([torch.linalg.vector_norm(t) for t in tensors])
    torch.testing.assert_close(fused, expected)
    assert fused_norms([]) == []


def test_one_event_holds_what_per_tag_writes_would(tmp_path):
    values = {"a/x": torch.tensor(1.5), "a/y": torch.tensor(-2.0), "b": torch.tensor(3.25)}
    batched, single = tmp_path / "batched", tmp_path / "single"
    with SummaryWriter(str(single)) as w:
        for tag, v in values.items():
            w.add_scalar(tag, v.item(), 7)
    w = SummaryWriter(str(batched))
    scalars = ScalarWriter(w)
    for tag, v in values.items():
        scalars.add(tag, v)
    assert scalars.flush(7) == {k: v.item() for k, v in values.items()}
    assert scalars.flush(8) == {}  # nothing pending: nothing written
    w.close()
    a, b = read_events(batched), read_events(single)
    assert sorted(a.Tags()["scalars"]) == sorted(b.Tags()["scalars"]) == sorted(values)
    for tag in values:
        assert [(e.step, e.value) for e in a.Scalars(tag)] == [(e.step, e.value) for e in b.Scalars(tag)]


def test_flat_hparams(make_cfg):
    cfg = make_cfg(["model=tied"])
    values = flat_hparams(cfg, {"model": "tied", "hydra/launcher": "basic"})
    assert values["model"] == "tied" and "hydra/launcher" not in values
    assert values["optim.lr"] == 0.03 and values["data.batch_size"] == 32 and values["model.width"] == 8
    assert not any(k.startswith(("telemetry", "model.shared", "optim._")) for k in values)
