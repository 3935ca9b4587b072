"""Where each use of a tied parameter is drawn in TensorBoard (telemetry/use_runs.py): labels by role,
the run's Custom Scalars layout, the per-use view built from a run's tags, and the end-of-run line."""

import re
from pathlib import Path

import pytest
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import nn

from conftest import read_events, run_cli
from experiments.layers import Unrolled
from experiments.runs import tensorboard_command
from experiments.telemetry import tags
from experiments.telemetry.events import EventFile
from experiments.telemetry.protos import text
from experiments.telemetry.use_runs import (LABELS_TEXT, label_of, labels_markdown, read_labels_markdown,
                                            run_layout, use_labels, write_view)
from experiments.tying import apply_param_ties, tie_groups


def aliases_of(model):
    """The uses of the model's one tied weight."""
    (group,) = [g for g in tie_groups(model) if g.canonical.endswith("weight")]
    return group.aliases


def test_an_embedding_tie_is_input_and_output():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 10))
    model[3].weight = model[0].weight  # as model=tied_lm: 3.weight is 0.weight
    assert use_labels(model, aliases_of(model)) == {"0.weight": "input", "3.weight": "output"}
    assert use_labels(model, ["3.weight", "0.weight"]) == {"3.weight": "output", "0.weight": "input"}


def test_a_cell_in_time_is_labelled_by_its_distance_from_the_loss():
    model = nn.Sequential(nn.Embedding(10, 4), Unrolled(4, 4, steps=5), nn.Linear(4, 10))
    labels = use_labels(model, [f"1.t{k}.weight_hh" for k in range(5)])
    assert labels == {f"1.t{k}.weight_hh": f"t-{4 - k}" for k in range(5)}  # the last step feeds the loss


def test_a_module_at_several_depths_is_labelled_by_depth():
    block = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(3, 4), block, nn.ReLU(), block, nn.ReLU(), block, nn.Linear(4, 1))
    assert use_labels(model, aliases_of(model)) == {"1.weight": "depth 1", "3.weight": "depth 2",
                                                   "5.weight": "depth 3"}
    nested = nn.Sequential(nn.Linear(3, 4), *[nn.Sequential(nn.Identity(), block)] * 2)
    assert use_labels(nested, aliases_of(nested)) == {"1.1.weight": "depth 1", "2.1.weight": "depth 2"}


def test_other_ties_keep_their_names():
    """Two different modules sharing a weight, neither an embedding: no role to name."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    assert use_labels(model, aliases_of(model)) == {"0.weight": "0.weight", "2.weight": "2.weight"}
    # t<k> parts of different modules are not one cell in time
    cells = nn.Sequential()
    cells.add_module("t0", nn.Linear(4, 4))
    cells.add_module("t1", nn.Linear(4, 4))
    cells.t1.weight = cells.t0.weight
    assert use_labels(cells, ["t0.weight", "t1.weight"]) == {"t0.weight": "t0.weight", "t1.weight": "t1.weight"}


def test_a_call_past_a_modules_names_gets_its_labels_number():
    labels = {"2.weight": "depth 1", "4.weight": "depth 2"}
    assert label_of(labels, "4.weight") == "depth 2"
    assert label_of(labels, "4#2.weight") == "depth 2#2"
    assert label_of(labels, "7.weight") == "7.weight"


def test_the_labels_table_reads_back():
    labels = {"0.weight": {"0.weight": "input", "5.weight": "output"}, "1.t0.bias_hh": {"1.t0.bias_hh": "t-1"}}
    assert read_labels_markdown(labels_markdown(labels)) == labels


def test_the_runs_layout_charts_each_tied_parameter_for_every_job():
    layout = run_layout(["2.weight", "1.t0.weight_hh"])["tied parameters"]
    patterns = [re.compile(p) for _, spec in layout.items() for p in spec[1]]
    written = [tags.tied_grad_norm("2.weight"), tags.use_stat("2.weight", "4.weight", "grad_norm"),
               tags.tied_grad_norm("1.t0.weight_hh"), tags.use_stat("1.t0.weight_hh", "1.t3.weight_hh", "grad_norm")]
    for tag in written:  # every sum and every use in exactly one chart
        assert sum(bool(p.search(tag)) for p in patterns) == 1, tag
    assert not any(p.search(tags.use_stat("2.weight", "4.weight", "cos")) for p in patterns)
    assert not any(p.search(tags.tied_grad_norm("12.weight")) for p in patterns)
    assert len(layout) == 4 and not any("job" in title or "run" in title for title in layout)  # jobs' layouts merge


def fake_job(folder: Path, input_norms, output_norms, start: float):
    """A run of a tied embedding as the tied signal writes it, with the project's own writer."""
    events = EventFile(folder)
    events.write_summary(text(LABELS_TEXT, labels_markdown({"0.weight": {"0.weight": "input", "5.weight": "output"}})))
    for i, (a, b) in enumerate(zip(input_norms, output_norms)):
        step = 1 + 10 * i
        names = [tags.tied_grad_norm("0.weight"), tags.use_stat("0.weight", "0.weight", "grad_norm"),
                 tags.use_stat("0.weight", "5.weight", "grad_norm"), tags.use_stat("0.weight", "5.weight", "cos"),
                 tags.cancellation("0.weight"), tags.LOSS_TRAIN]
        values = [a + b, a, b, 0.5, 0.9, 1.0]
        events.write_event(Event(wall_time=start + i, step=step, summary=Summary(
            value=[Summary.Value(tag=t, simple_value=v) for t, v in zip(names, values)])))
    events.close()


def test_the_per_use_view_has_a_run_per_label_and_a_tag_per_job(tmp_path):
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    sweep = tmp_path / "sweep"
    fake_job(sweep / "tying=tied", [1.0, 2.0, 3.0], [10.0, 20.0, 30.0], start=1000.0)
    fake_job(sweep / "tying=tied_input_x10", [5.0, 6.0, 7.0], [8.0, 9.0, 10.0], start=2000.0)
    out = tmp_path / "view"
    assert write_view(sweep, out) == ["sum", "input", "output"]
    assert write_view(sweep, out) == ["sum", "input", "output"]  # again: replaced, not doubled
    runs = EventMultiplexer().AddRunsFromDirectory(str(out))
    runs.Reload()
    assert sorted(runs.Runs()) == ["input", "output", "sum"]
    # TensorBoard colours runs in the order of their first event: the sum, then input, output
    assert sorted(runs.Runs(), key=runs.FirstEventTimestamp) == ["sum", "input", "output"]
    output = read_events(out / "output")
    assert sorted(output.Tags()["scalars"]) == ["0.weight cos/tying=tied", "0.weight cos/tying=tied_input_x10",
                                                 "0.weight grad_norm/tying=tied",
                                                 "0.weight grad_norm/tying=tied_input_x10"]
    points = [(e.step, e.wall_time, e.value) for e in output.Scalars("0.weight grad_norm/tying=tied_input_x10")]
    assert points == [(1, 2000.0, 8.0), (11, 2001.0, 9.0), (21, 2002.0, 10.0)]  # steps, times and values kept
    assert [e.value for e in read_events(out / "sum").Scalars("0.weight grad_norm/tying=tied")] == [11, 22, 33]
    assert [e.value for e in read_events(out / "input").Scalars("0.weight grad_norm/tying=tied")] == [1, 2, 3]
    assert len(list((out / "sum").iterdir())) == 1
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout.FromString(
        read_events(out / "sum").Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {cat.title: {c.title: list(c.multiline.tag) for c in cat.chart} for cat in layout.category}
    assert set(charts) == {"tying=tied", "tying=tied_input_x10"}
    (pattern,) = charts["tying=tied"]["0.weight: gradient norm of each use and of the sum"]
    assert re.search(pattern, "0.weight grad_norm/tying=tied") and not re.search(pattern, "0.weight grad_norm/tying=tiedX")


def test_the_per_use_view_of_a_folder_without_uses_is_an_error(tmp_path):
    events = EventFile(tmp_path / "run")
    events.write_scalars(1, [tags.LOSS_TRAIN], [1.0])
    events.close()
    with pytest.raises(ValueError, match="no run below it logged per-use gradients"):
        write_view(tmp_path, tmp_path / "view")
    result = run_cli([str(tmp_path)], script="scripts/uses_view.py")
    assert result.returncode == 2 and "no run below it" in result.stderr


def sweep_job(root: Path, day: str, sweep: str, job: str) -> Path:
    folder = root / "outputs" / "multirun" / day / sweep
    (folder / job).mkdir(parents=True)
    (folder / "multirun.yaml").write_text("hydra: {}\n")
    return folder / job


def test_the_end_of_run_line_opens_the_days_sweeps_and_names_the_per_use_view(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = sweep_job(tmp_path, "2026-11-22", "10-45-46.237502", "init.gain=0.5")
    line = tensorboard_command(job, tied=True)
    assert line == ("tensorboard --logdir outputs/multirun/2026-11-22  (this run: 10-45-46.237502/init.gain=0.5); "
                    "each use in its own colour: python scripts/uses_view.py outputs/multirun/2026-11-22/10-45-46.237502")
    assert tensorboard_command(job) == \
        "tensorboard --logdir outputs/multirun/2026-11-22  (this run: 10-45-46.237502/init.gain=0.5)"
    single = tmp_path / "outputs" / "2026-11-22" / "10-30-00.412345-tied-xavier"
    single.mkdir(parents=True)
    assert tensorboard_command(single, tied=True) == (
        "tensorboard --logdir outputs/2026-11-22  (this run: 10-30-00.412345-tied-xavier); "
        "each use in its own colour: python scripts/uses_view.py outputs/2026-11-22/10-30-00.412345-tied-xavier")
    own = tmp_path / "mine" / "sweep"  # hydra.sweep.dir of the user's: its parent is no day, not widened
    (own / "a=1").mkdir(parents=True)
    (own / "multirun.yaml").write_text("hydra: {}\n")
    assert tensorboard_command(own / "a=1").startswith("tensorboard --logdir mine/sweep  (this run: a=1)")


def test_labels_equal_those_of_the_models_the_experiments_build(make_cfg):
    """The three experiment presets' models, built from their configs: input/output, t-k, depth k."""
    from experiments.models import build_model

    expected = {"experiment=weight_tying": {"0.weight": "input", "5.weight": "output"},
                "experiment=bptt": {f"1.t{k}.weight_hh": f"t-{7 - k}" for k in range(8)},
                "experiment=shared_depth": {f"{i}.inner.weight": f"depth {i}" for i in (1, 2, 3, 4)}}
    for preset, labels in expected.items():
        cfg = make_cfg([preset, "data.num_outputs=50"]).model  # the number the data would set
        model = build_model(cfg)
        apply_param_ties(model, cfg.tie)  # model.tie (weight_tying's), as the experiment applies it
        groups = {g.canonical: g.aliases for g in tie_groups(model)}
        param = next(name for name, aliases in groups.items() if set(labels) <= set(aliases))
        assert use_labels(model, groups[param]) == labels, preset


def test_labels_of_uses_found_by_use():
    """A module called at every depth under one name (ALBERT): depth k; a head reading the embedding's weight
    functionally (nanoGPT): input and output."""
    from torch import nn as tnn

    from experiments.telemetry.use_runs import use_labels

    class GPT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.block = tnn.Embedding(5, 3), tnn.Linear(3, 3)

    model = GPT()
    assert use_labels(model, ["block.weight", "block#1.weight", "block#2.weight"]) == {
        "block.weight": "depth 1", "block#1.weight": "depth 2", "block#2.weight": "depth 3"}
    assert use_labels(model, ["wte.weight", "wte.weight@GPT"]) == {"wte.weight": "input", "wte.weight@GPT": "output"}
