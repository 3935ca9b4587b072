"""The event writer: one event per step holds what per-tag writes would; C checksums are TensorBoard's."""

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from conftest import read_events
from experiments.telemetry.events import ScalarWriter


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


def test_blocks_singles_and_checks_in_any_order(tmp_path):
    """Blocks (one tensor for many tags), single values and checks, interleaved: every tag gets
    its own value; a failed check raises with the numbers and writes nothing of that step."""
    w = SummaryWriter(str(tmp_path))
    scalars = ScalarWriter(w)
    scalars.add("a", torch.tensor(1.0))
    scalars.check(torch.tensor(0.5), torch.tensor(1.0), lambda e, tol: AssertionError("must not fail"))
    scalars.extend(["b/0", "b/1", "b/2"], torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64))
    scalars.add("c", torch.tensor([5.0]))
    scalars.extend(["d", "e"], [torch.tensor(6.0), torch.tensor(7)])
    assert scalars.flush(1) == {"a": 1.0, "b/0": 2.0, "b/1": 3.0, "b/2": 4.0, "c": 5.0, "d": 6.0, "e": 7.0}
    scalars.add("a", torch.tensor(9.0))
    scalars.check(torch.tensor(2.0), torch.tensor(1.0), lambda e, tol: ValueError(f"off by {e} > {tol}"))
    scalars.extend(["b/0", "b/1", "b/2"], torch.zeros(3))
    with pytest.raises(ValueError, match="off by 2.0 > 1.0"):
        scalars.flush(2)
    assert scalars.flush(3) == {}  # the failed step's values are gone, not carried over
    with pytest.raises(ValueError, match="2 tags but 3 values"):
        scalars.extend(["x", "y"], torch.zeros(3))
    w.close()
    acc = read_events(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("a")] == [(1, 1.0)]


def test_fast_event_checksums_write_the_same_records(tmp_path):
    import os
    import struct

    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as pure_python
    from tensorboard.summary.writer import record_writer

    from experiments.telemetry.events import FAST_CHECKSUMS

    assert FAST_CHECKSUMS and record_writer.masked_crc32c is not pure_python
    for size in (0, 1, 8, 100, 2048):
        data = os.urandom(size)
        assert record_writer.masked_crc32c(data) == pure_python(data)
    with SummaryWriter(str(tmp_path)) as w:
        w.add_scalar("x", 1.0, 1)
    raw = next(tmp_path.glob("events.out.tfevents.*")).read_bytes()
    offset = 0
    while offset < len(raw):  # every record's two checksums, verified with tensorboard's own function
        header = raw[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", raw[offset + 8:offset + 12])[0] == pure_python(header)
        data = raw[offset + 12:offset + 12 + length]
        assert struct.unpack("<I", raw[offset + 12 + length:offset + 16 + length])[0] == pure_python(data)
        offset += 16 + length
    assert read_events(tmp_path).Scalars("x")[0].value == 1.0
