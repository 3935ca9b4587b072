"""The report's headline: each job's finding about its tied parameters, checked against the event files.

Three small runs, one per kind of tie (an embedding tied to the output, a cell in time, a block used
at two depths), are trained in-process; the headline's numbers (``headline.csv``, what ``report.md``
shows) are recomputed here from the event files read record by record with TensorBoard's
RawEventFileLoader, not the EventAccumulator the report uses, and from the model's own modules for
which use is the embedding's."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
from torch import nn

from experiments.config import compose_config
from experiments.inspection import compose_model
from experiments.runs import Job, by_swept_value
from experiments.telemetry import tags
from experiments.training import train

RUNS = {
    "lm": ["model=tied_lm", "data=zipf_text", "data.n_train=512", "data.n_val=128", "data.vocab=100",
           "model.width=8", "model.hidden=16", "optim=adam", "optim.lr=0.01", "trainer.epochs=2",
           "telemetry.tied.every=2", "telemetry.histograms.enabled=false"],
    "rnn": ["model=rnn", "data=zipf_text", "data.n_train=512", "data.n_val=128", "data.vocab=100", "model.width=8",
            "init=recurrent", "init.gain=2", "optim.lr=0.5", "trainer.epochs=2", "telemetry.tied.every=2",
            "telemetry.histograms.enabled=false"],
    "mlp": ["model=tied", "data.n_train=256", "trainer.epochs=2", "telemetry.tied.every=2",
            "telemetry.histograms.enabled=false"],
}


def curves(run_dir: Path) -> dict:
    """tag -> {step: value} of every scalar, straight from the event files."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    found = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for record in RawEventFileLoader(str(path)).Load():
            event = Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    found.setdefault(value.tag, {})[event.step] = value.simple_value
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from experiments.report import write_report

    root = tmp_path_factory.mktemp("headline")
    for name, overrides in RUNS.items():
        train(compose_config(overrides), root / name)
    written = write_report(root, figures=False)
    with open(root / "headline.csv") as f:
        rows = list(csv.DictReader(f))
    return root, written, rows


def lines(rows, job):
    return {(r["parameter"], r["quantity"]): r for r in rows if r["job"] == job}


def assert_triple(row, values_by_step):
    """step 1, the median over the logged steps and the last step, from a {step: value} series."""
    steps = sorted(values_by_step)
    assert int(row["first_step"]) == steps[0] == 1 and int(row["last_step"]) == steps[-1]
    assert float(row["at_start"]) == pytest.approx(values_by_step[steps[0]], rel=1e-6)
    assert float(row["median"]) == pytest.approx(statistics.median(values_by_step.values()), rel=1e-6)
    assert float(row["at_end"]) == pytest.approx(values_by_step[steps[-1]], rel=1e-6)


def test_an_embedding_tie_headlines_each_uses_share_and_output_over_input(report):
    root, _, rows = report
    model = compose_model(RUNS["lm"]).model
    (embedding,) = [f"{n}.weight" for n, m in model.named_children() if isinstance(m, nn.Embedding)]
    (output,) = {"0.weight", "5.weight"} - {embedding}
    raw = curves(root / "lm")
    n_in, n_out = (raw[tags.use_stat("0.weight", use, "grad_norm")] for use in (embedding, output))
    found = lines(rows, "lm")
    assert set(found) == {("0.weight", "share of input"), ("0.weight", "share of output"),
                          ("0.weight", "output / input")}
    assert_triple(found["0.weight", "share of input"], {s: n_in[s] / (n_in[s] + n_out[s]) for s in n_in})
    assert_triple(found["0.weight", "share of output"], {s: n_out[s] / (n_in[s] + n_out[s]) for s in n_in})
    assert_triple(found["0.weight", "output / input"], {s: n_out[s] / n_in[s] for s in n_in})
    assert float(found["0.weight", "output / input"]["at_start"]) > 1  # the output use dominates at first


def test_a_cell_in_time_headlines_the_first_over_the_last_steps_gradient(report):
    root, _, rows = report
    raw = curves(root / "rnn")
    far, near = (raw[tags.use_stat("1.t0.weight_ih", f"1.t{t}.weight_ih", "grad_norm")] for t in (0, 7))
    (row,) = lines(rows, "rnn").values()  # one line: the input weights', not weight_hh's or the biases'
    assert (row["parameter"], row["quantity"], row["kind"]) == ("1.t0.weight_ih", "t-7 / t-0", "time")
    assert_triple(row, {s: far[s] / near[s] for s in far})
    assert float(row["at_start"]) > 1  # gain 2: the gradient grows with the distance from the loss


def test_a_shared_block_headlines_the_spread_across_depths_and_the_cancellation(report):
    root, _, rows = report
    raw = curves(root / "mlp")
    depths = [raw[tags.use_stat("2.weight", use, "grad_norm")] for use in ("2.weight", "4.weight")]
    found = lines(rows, "mlp")
    assert set(found) == {("2.weight", "largest / smallest"), ("2.weight", "cancellation")}
    assert_triple(found["2.weight", "largest / smallest"],
                  {s: max(d[s] for d in depths) / min(d[s] for d in depths) for s in depths[0]})
    assert_triple(found["2.weight", "cancellation"], raw[tags.cancellation("2.weight")])


def test_report_md_states_the_headline_with_uses_named_by_role(report):
    root, written, rows = report
    text = written.text
    assert "## Headline" in text and text.index("## Headline") < text.index("## Jobs")
    at_start = {(r["job"], r["quantity"]): float(r["at_start"]) for r in rows}
    assert f"| `lm` | `0.weight` | output / input | {at_start['lm', 'output / input']:.3g} |" not in text  # not 1st
    assert f"| output / input | {at_start['lm', 'output / input']:.3g} |" in text
    assert f"| `rnn` | `1.t0.weight_ih` | t-7 / t-0 | {at_start['rnn', 't-7 / t-0']:.3g} |" in text
    assert "uses/" not in text and "use 0.weight" not in text


def test_the_run_writes_each_uses_role(report):
    root, _, _ = report
    from experiments.runs import load_job

    assert load_job(root / "lm", root).use_roles("0.weight") == {"0.weight": "input", "5.weight": "output"}
    rnn = load_job(root / "rnn", root).use_roles("1.t0.weight_hh")
    assert rnn["1.t7.weight_hh"] == "t-0" and rnn["1.t0.weight_hh"] == "t-7" and len(rnn) == 8
    assert load_job(root / "mlp", root).use_roles("2.bias") == {"2.bias": "depth 1", "4.bias": "depth 2"}


def test_jobs_are_ordered_by_the_swept_value_numbers_as_numbers_null_first():
    def job(*overrides):
        return Job(Path("x"), ",".join(overrides), overrides=[*overrides, "experiment=bptt"])

    jobs = [job(f"init.gain={g}", f"trainer.clip_grad_norm={c}") for g in ("2.0", "10.0", "0.5")
            for c in ("0.25", "null")]
    ordered = [j.name for j in by_swept_value(jobs)]
    assert ordered == [f"init.gain={g},trainer.clip_grad_norm={c}" for g in ("0.5", "2.0", "10.0")
                       for c in ("null", "0.25")]
    words = [job(f"tying={t}") for t in ("untied", "tied_input_x10", "tied")]
    assert [j.name for j in by_swept_value(words)] == ["tying=tied", "tying=tied_input_x10", "tying=untied"]
