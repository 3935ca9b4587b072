"""Our summary builders produce the protobufs torch.utils.tensorboard.summary does (without importing
TensorFlow's stub file system and boto3 at start-up)."""

import pytest
import torch
import torch.utils.tensorboard.summary as reference

from experiments.telemetry import protos


def test_text_and_layout_are_torchs():
    assert protos.text("ties", "| a | b |\n|---|---|") == reference.text("ties", "| a | b |\n|---|---|")
    layout = {"tied parameters": {"2.weight: sum and uses": ["Multiline", [r"tied/2\.weight/grad_norm$"]],
                                  "2.bias": ["Multiline", ["a", "b"]]}}
    assert protos.custom_scalars(layout) == reference.custom_scalars(layout)


def test_hparams_are_torchs_with_a_session_name():
    values = {"model": "tied", "optim.lr": 0.03, "trainer.epochs": 2, "flag": True}
    ours = protos.hparams(values, ["loss/train", "loss/val"], name="init=xavier,model=tied")
    theirs = reference.hparams(values, {"loss/train": 0.0, "loss/val": 0.0})
    assert ours[0] == theirs[0] and ours[2] == theirs[2]  # experiment, session end
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    start = HParamsPluginData.FromString(ours[1].value[0].metadata.plugin_data.content).session_start_info
    expected = HParamsPluginData.FromString(theirs[1].value[0].metadata.plugin_data.content).session_start_info
    assert start.group_name == "init=xavier,model=tied"
    start.group_name = ""
    assert start == expected


@pytest.mark.parametrize("values", [torch.randn(1000), torch.zeros(5), torch.tensor([3.0]), torch.randn(7, 9) * 1e6,
                                    torch.tensor([-1e-20, 0.0, 1e-20, 2.5])])
def test_histograms_are_summary_writers(values):
    ours = protos.histogram("param/0.weight", values)
    theirs = reference.histogram("param/0.weight", values, bins=protos.HISTOGRAM_BINS)
    assert ours == theirs


def test_a_histogram_of_non_finite_values_does_not_crash():
    """TensorBoard's own builder raises 'The histogram is empty, please file a bug report.'"""
    with pytest.raises(ValueError, match="histogram is empty"):
        reference.histogram("g", torch.tensor([float("nan"), float("inf")]), bins=protos.HISTOGRAM_BINS)
    summary = protos.histogram("g", torch.tensor([float("nan"), float("inf")]))
    assert summary.value[0].tag == "g" and summary.value[0].histo.num == 0
    partial = protos.histogram("g", torch.tensor([1.0, float("nan"), 2.0]))
    assert partial.value[0].histo.num == 2 and partial.value[0].histo.max == 2.0


def test_binning_is_numpys_on_the_edges_themselves():
    """Values exactly on TensorBoard's edges, just beside them, at zero, at ±1e-12 and beyond ±1e20."""
    import numpy as np

    from experiments.telemetry.protos import _bin

    edges = protos.HISTOGRAM_BINS
    rng = np.random.default_rng(0)
    cases = [rng.standard_normal(10000) * s for s in (1e-14, 1, 1e19)] + [rng.standard_cauchy(100_000) * 1e-3]
    cases += [edges.copy(), np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf), edges * (1 + 1e-9),
              edges * (1 - 1e-9), edges * (1 + 1e-7), np.array([0.0, -0.0, 1e-12, -1e-12, 5e-13, 5e-324, -5e-324,
                                                                edges[-1], edges[0], 2e20, -2e20, 1e300, -1e300])]
    for values in cases:
        assert np.array_equal(_bin(torch.from_numpy(values)), np.histogram(values, bins=edges)[0])


def test_numbers_beyond_float_range_are_inf_in_hparams_and_histograms():
    """An hparam int too large for a double is ±inf (not an OverflowError); a float64 tensor whose sum
    of squares overflows gives an inf ``sum_squares`` without a numpy warning."""
    import math
    import warnings

    start = protos.hparams({"big": 10**400, "small": -(10**400), "lr": 0.5}, ["loss/val"], "run")[1]
    from tensorboard.plugins.hparams import plugin_data_pb2

    info = plugin_data_pb2.HParamsPluginData.FromString(start.value[0].metadata.plugin_data.content)
    hp = info.session_start_info.hparams
    assert (hp["big"].number_value, hp["small"].number_value, hp["lr"].number_value) == (math.inf, -math.inf, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        histo = protos.histogram("h", torch.tensor([1e300, -1e300, 3.0], dtype=torch.float64)).value[0].histo
    assert (histo.num, histo.sum_squares, histo.max) == (3, math.inf, 1e300)
