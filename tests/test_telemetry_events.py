"""The event writer's fast paths write exactly what the straightforward ones (protobuf objects,
TensorBoard's SummaryWriter) write: byte for byte where they can, and as TensorBoard reads them."""

import struct

import pytest
import torch
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as pure_python
from torch.utils.tensorboard import SummaryWriter

from conftest import read_events
from experiments.telemetry.events import FAST_CHECKSUMS, EventFile, ScalarWriter, encode_scalars, masked_crc32c
from experiments.telemetry.protos import histogram, text


@pytest.mark.parametrize("tags, values, step", [
    (["a"], [1.5], 0),
    (["loss/train", "tied/2.weight/use/4.weight/cos", "zero"], [0.25, -3e-9, 0.0], 7),
    (["x" * 300, "ü/ñ", "param_norm/0.block 1.2.weight"], [float("inf"), float("nan"), 1e30], 2**40 + 3),
])
def test_bulk_scalar_encoding_is_protobufs_bytes(tags, values, step):
    expected = Event(wall_time=1234.5678, step=step, summary=Summary(
        value=[Summary.Value(tag=t, simple_value=v) for t, v in zip(tags, values)])).SerializeToString()
    assert encode_scalars(step, 1234.5678, tags, values) == expected


def test_checksums_are_tensorboards():
    import os

    assert FAST_CHECKSUMS
    for size in (0, 1, 8, 100, 2048):
        data = os.urandom(size)
        assert masked_crc32c(data) == pure_python(data)


def test_event_file_reads_back_as_summary_writers_does(tmp_path):
    """The same scalars, histogram and text through SummaryWriter and through EventFile: TensorBoard's
    reader finds the same tags, steps and values; every record's checksums are TensorBoard's."""
    values = torch.randn(100)
    with SummaryWriter(str(tmp_path / "reference")) as w:
        for step in (1, 2, 5):
            for i, tag in enumerate(("a/x", "a/y", "b")):
                w.add_scalar(tag, step * 0.5 + i, step)
        w.add_histogram("h", values, 3)
        w.add_text("t", "hello **world**", 0)
    events = EventFile(tmp_path / "ours")
    for step in (1, 2, 5):
        events.write_scalars(step, ["a/x", "a/y", "b"], [step * 0.5 + i for i in range(3)])
    events.write_summary(histogram("h", values), 3)
    events.write_summary(text("t", "hello **world**"), 0)
    events.close()
    ref, ours = read_events(tmp_path / "reference"), read_events(tmp_path / "ours")
    assert sorted(ours.Tags()["scalars"]) == sorted(ref.Tags()["scalars"]) == ["a/x", "a/y", "b"]
    for tag in ("a/x", "a/y", "b"):
        assert [(e.step, e.value) for e in ours.Scalars(tag)] == [(e.step, e.value) for e in ref.Scalars(tag)]
    assert ours.Histograms("h")[0].histogram_value == ref.Histograms("h")[0].histogram_value
    assert ours.Tensors("t/text_summary")[0].tensor_proto == ref.Tensors("t/text_summary")[0].tensor_proto
    raw, offset = events.path.read_bytes(), 0
    assert events.path.name.startswith("events.out.tfevents.")
    while offset < len(raw):
        header = raw[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", raw[offset + 8:offset + 12])[0] == pure_python(header)
        data = raw[offset + 12:offset + 12 + length]
        assert struct.unpack("<I", raw[offset + 12 + length:offset + 16 + length])[0] == pure_python(data)
        offset += 16 + length


def test_purge_step_drops_what_an_earlier_file_logged_from_there_on(tmp_path):
    first = EventFile(tmp_path)
    for step in range(1, 7):
        first.write_scalars(step, ["loss"], [float(step)])
    first.close()
    second = EventFile(tmp_path, purge_step=4)  # a resumed run: steps 4.. again
    for step in range(4, 9):
        second.write_scalars(step, ["loss"], [10.0 * step])
    second.close()
    assert [(e.step, e.value) for e in read_events(tmp_path).Scalars("loss")] == \
        [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0), (7, 70.0), (8, 80.0)]


def test_blocks_singles_sub_runs_and_checks_in_any_order(tmp_path):
    """Blocks (one tensor for many tags), single values, a sub-run's values and checks, interleaved,
    reach the host in one transfer: every tag gets its own value in its own run; a failed check
    raises with the numbers and writes nothing of that step."""
    main, sub = EventFile(tmp_path / "run"), EventFile(tmp_path / "run" / "uses" / "2")
    scalars = ScalarWriter(main)
    scalars.add("a", torch.tensor(1.0))
    scalars.check(torch.tensor(0.5), torch.tensor(1.0), lambda e, tol: AssertionError("must not fail"))
    scalars.extend(["b/0", "b/1", "b/2"], torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64))
    scalars.add("a", torch.tensor(8.0), sub)
    scalars.add("c", torch.tensor([5.0]))
    scalars.extend(["d", "e"], [torch.tensor(6.0), torch.tensor(7)])
    assert scalars.flush(1) == {"a": 1.0, "b/0": 2.0, "b/1": 3.0, "b/2": 4.0, "c": 5.0, "d": 6.0, "e": 7.0}
    assert scalars.flush(9) == {}  # nothing pending: nothing written
    scalars.add("a", torch.tensor(9.0))
    scalars.check(torch.tensor(2.0), torch.tensor(1.0), lambda e, tol: ValueError(f"off by {e} > {tol}"))
    scalars.extend(["b/0", "b/1", "b/2"], torch.zeros(3))
    with pytest.raises(ValueError, match="off by 2.0 > 1.0"):
        scalars.flush(2)
    assert scalars.flush(3) == {}  # the failed step's values are gone, not carried over
    with pytest.raises(ValueError, match="2 tags but 3 values"):
        scalars.extend(["x", "y"], torch.zeros(3))
    main.close()
    sub.close()
    assert [(e.step, e.value) for e in read_events(tmp_path / "run").Scalars("a")] == [(1, 1.0)]
    assert [(e.step, e.value) for e in read_events(tmp_path / "run" / "uses" / "2").Scalars("a")] == [(1, 8.0)]


def test_values_beyond_float32_are_logged_as_inf_as_protobuf_stores_them(tmp_path):
    """A diverging run's values (a loss of 1e39, a perplexity of e^150, an int beyond float64) are ±inf,
    in the bulk encoding, through EventFile and through ScalarWriter's float64 blocks; never an error."""
    just_above = 3.4028235677973366e38  # rounds to inf in float32 (protobuf and IEEE agree)
    values = [1e39, -1e39, 10**400, -(10**400), just_above, 3.4e38, 2.5]
    expected = Event(wall_time=1.5, step=-100, summary=Summary(
        value=[Summary.Value(tag=f"v{i}", simple_value=float(min(max(v, -1e300), 1e300)))
               for i, v in enumerate(values)])).SerializeToString()
    assert encode_scalars(-100, 1.5, [f"v{i}" for i in range(len(values))], values) == expected
    events = EventFile(tmp_path)
    events.write_scalars(3, [f"v{i}" for i in range(len(values))], values)
    scalars = ScalarWriter(events)
    scalars.extend(["block/0", "block/1"], torch.tensor([1e39, -1e300], dtype=torch.float64))
    assert scalars.flush(4) == {"block/0": float("inf"), "block/1": float("-inf")}
    events.close()
    acc = read_events(tmp_path)
    inf = float("inf")
    assert [acc.Scalars(f"v{i}")[0].value for i in range(len(values))] == \
        [inf, -inf, inf, -inf, inf, pytest.approx(3.4e38, rel=1e-7), 2.5]
    assert [(e.step, e.value) for e in acc.Scalars("block/0")] == [(4, inf)]
