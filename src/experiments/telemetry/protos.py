"""The few non-scalar summaries a run writes, built from TensorBoard's protobuf classes directly:
text, a custom-scalars layout, hparams, histograms.

They are what ``torch.utils.tensorboard.summary`` builds (``tests/test_telemetry_protos.py``
compares them field by field), without importing it: that module pulls in TensorFlow's stub
file system and with it boto3, ~0.35 s of every run's start-up.
"""

from __future__ import annotations

import math
from typing import List, Mapping, Sequence

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData


def text(tag: str, markdown: str) -> Summary:
    """The Text tab's ``<tag>/text_summary``."""
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name="text", content=TextPluginData(version=0).SerializeToString()))
    tensor = TensorProto(dtype="DT_STRING", string_val=[markdown.encode("utf_8")],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    return Summary(value=[Summary.Value(tag=tag + "/text_summary", metadata=metadata, tensor=tensor)])


def custom_scalars(layout: Mapping[str, Mapping[str, list]]) -> Summary:
    """The Custom Scalars tab's layout: category -> chart title -> ["Multiline", [tag regexes]]."""
    categories = []
    for title, charts in layout.items():
        chart_protos = [layout_pb2.Chart(title=name, multiline=layout_pb2.MultilineChartContent(tag=spec[1]))
                        for name, spec in charts.items()]
        categories.append(layout_pb2.Category(title=title, chart=chart_protos))
    tensor = TensorProto(dtype="DT_STRING", string_val=[layout_pb2.Layout(category=categories).SerializeToString()],
                         tensor_shape=TensorShapeProto())
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
    return Summary(value=[Summary.Value(tag="custom_scalars__config__", tensor=tensor, metadata=metadata)])


def _as_double(value) -> float:
    """A number as the double the HParams tab holds; an int beyond a double's range is ±inf."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _hparams_summary(tag: str, **data) -> Summary:
    content = plugin_data_pb2.HParamsPluginData(version=0, **data).SerializeToString()
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content))
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata)])


def hparams(values: Mapping[str, object], metrics: Sequence[str], name: str = "") -> List[Summary]:
    """The HParams tab's experiment, session start (named ``name``) and session end summaries.
    Numbers (and booleans) are number values, anything else a string."""
    start = plugin_data_pb2.SessionStartInfo(group_name=name)
    infos = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, (int, float)):
            start.hparams[key].number_value = _as_double(value)
            infos.append(api_pb2.HParamInfo(name=key, type=api_pb2.DataType.Value("DATA_TYPE_FLOAT64")))
        else:
            start.hparams[key].string_value = str(value)
            infos.append(api_pb2.HParamInfo(name=key, type=api_pb2.DataType.Value("DATA_TYPE_STRING")))
    experiment = api_pb2.Experiment(hparam_infos=infos,
                                    metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in metrics])
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value("STATUS_SUCCESS"))
    return [_hparams_summary("_hparams_/experiment", experiment=experiment),
            _hparams_summary("_hparams_/session_start_info", session_start_info=start),
            _hparams_summary("_hparams_/session_end_info", session_end_info=end)]


def _tensorflow_bins() -> np.ndarray:
    """TensorBoard's default bucket edges ("tensorflow"): ±1e-12 growing by 10% to 1e20."""
    edges, v = [], 1e-12
    while v < 1e20:
        edges.append(v)
        v *= 1.1
    return np.array([-e for e in reversed(edges)] + [0.0] + edges)


HISTOGRAM_BINS = _tensorflow_bins()


_K = (len(HISTOGRAM_BINS) - 1) // 2  # HISTOGRAM_BINS[_K] == 0.0; HISTOGRAM_BINS[_K + 1 + k] == 1e-12 * 1.1**k
_LOG_FIRST, _PER_LOG = math.log(HISTOGRAM_BINS[_K + 1]), 1 / math.log(1.1)


def _bin(x: torch.Tensor) -> np.ndarray:
    """``np.histogram(x, HISTOGRAM_BINS)[0]`` for finite float64 ``x`` (half-open bins, the last one
    closed, values outside left out), ~4x faster than a sorted search over 1,500 edges: the edges grow
    by 10%, so a value's bin is a logarithm away. The few values within 1e-6 of a bin's log-edge (where
    rounding could move them, and where the edges' own rounding lives) and those beyond 1e19 are placed
    by the sorted search on the edges themselves."""
    edges, n = HISTOGRAM_BINS, len(HISTOGRAM_BINS)
    r = x.abs().log_().sub_(_LOG_FIRST).mul_(_PER_LOG)  # a value at edge 1e-12 * 1.1**k has r == k
    k = r.floor()
    frac = r.sub_(k)
    unsure = (frac < 1e-6) | (frac > 1 - 1e-6) | (k >= _K - 2)
    # bin _K + 1 + k above zero, _K - 2 - k below (+0.0 and -0.0 both in bin _K); n - 1 collects the outside
    index = k.clamp_(min=-1).add_(1.5).copysign_(x + 0.0).add_(_K - 0.5).to(torch.int64)
    if unsure.any():
        exact_x = x[unsure].numpy()
        exact = np.searchsorted(edges, exact_x, side="right") - 1
        exact[exact_x == edges[-1]] = n - 2
        exact[(exact < 0) | (exact >= n - 1)] = n - 1
        index[unsure] = torch.from_numpy(exact)
    return torch.bincount(index, minlength=n)[:n - 1].numpy()


def histogram(tag: str, values: torch.Tensor) -> Summary:
    """A histogram of ``values`` with TensorBoard's default buckets, trimmed to the ones that hold
    values (TensorBoard's histogram.cc logic). Values that are not finite are left out."""
    x = values.detach().reshape(-1).to("cpu", torch.float64)
    finite = torch.isfinite(x)
    if not finite.all():
        x = x[finite]
    if x.numel() == 0:  # nothing finite to draw: an empty histogram rather than a crash
        return Summary(value=[Summary.Value(tag=tag, histo=HistogramProto())])
    counts, limits, x = _bin(x), HISTOGRAM_BINS, x.numpy()
    with np.errstate(over="ignore"):  # a diverging float64 tensor: its sum of squares is inf, not a warning
        total, squares = x.sum(), x.dot(x)
    cumulative = np.cumsum(counts > 0)
    first, last = np.searchsorted(cumulative, [0, cumulative[-1] - 1], side="right")
    first, last = int(first), int(last) + 1
    # TensorBoard keeps only right bin limits: an empty bin on the left keeps the leftmost one
    counts = counts[first - 1:last] if first > 0 else np.concatenate([[0], counts[:last]])
    limits = limits[first:last + 1]
    proto = HistogramProto(min=x.min(), max=x.max(), num=len(x), sum=total, sum_squares=squares,
                           bucket_limit=limits.tolist(), bucket=counts.tolist())
    return Summary(value=[Summary.Value(tag=tag, histo=proto)])

