"""The benchmark runs and reports every variant, workload and measurement (no timing assertions)."""

import json

import pytest

from conftest import run_cli


@pytest.mark.slow  # (over 8 s: the default suite stays under 5 minutes; .ci/run runs it)
def test_bench_smoke(tmp_path):
    result = run_cli(["--repeats", "1", "--quick", "--processes", "0", "--workloads", "tiny", "wide", "--out",
                      str(tmp_path)], script="scripts/bench.py", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "bench.json").read_text())
    variants = ["plain loop", "ours, telemetry off", "ours, default", "ours, default + model.grad_scale",
                "ours, every signal every step"]
    for workload in ("tiny", "wide"):
        assert list(data["workloads"][workload])[:5] == variants  # then Lightning, with the bench extra
        assert data["workloads"][workload]["plain loop"]["ratio"] == 1.0
        for row in data["workloads"][workload].values():
            assert row["steps_per_s"] > 0 and row["cpu_steps_per_s"] > 0 and row["ratio_min"] <= row["ratio_max"]
    assert list(data["logging_growth_us"]) == ["10", "20"]
    assert set(data["cold_start_s"]) == {"import torch", "floor to first step", "floor to exit",
                                          "train.py to first step", "train.py to exit"}
    md = (tmp_path / "bench.md").read_text()
    assert md in result.stdout and "| tiny | ours, every signal every step |" in md and "× the floor script" in md
    assert list(data["workloads"]) == ["tiny", "wide"] and data["lens_cost"] is None


@pytest.mark.slow
def test_bench_hf_gpt2_and_the_lens_cost(tmp_path):
    """The hf_gpt2 workload (every variant), the cost of a logged step against an unwatched one, the memory."""
    pytest.importorskip("transformers")
    result = run_cli(["--repeats", "1", "--quick", "--processes", "0", "--workloads", "hf_gpt2", "--out",
                      str(tmp_path)], script="scripts/bench.py", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["workloads"]["hf_gpt2"]
    assert list(rows)[:5] == ["plain loop", "ours, telemetry off", "ours, default", "ours, default + model.grad_scale",
                              "ours, every signal every step"]
    assert all(r["steps_per_s"] > 0 for r in rows.values())
    steps = data["lens_cost"]["steps"]
    assert list(steps) == ["unwatched step", "quiet step (lens attached, nothing due)",
                           "quiet step, model.grad_scale on one use", "logged step: every use captured (tied)",
                           "logged step: every default signal"]
    assert steps["unwatched step"]["ratio"] == 1.0 and all(r["cpu_ms"] > 0 for r in steps.values())
    memory = data["lens_cost"]["memory"]
    wte = 256 * 32 * 4  # data.vocab x n_embd, float32: the tied embedding, read twice (embedding and head)
    assert memory["uses"] == 29  # 28 parameters, the embedding used twice
    assert memory["one gradient per use"] == memory["gradients (.grad)"] + wte
    # on the logged step: one gradient per use, and the previous logged step's shared uses (lens.uses())
    assert memory["held after backward on a logged step"] == memory["one gradient per use"] + 2 * wte
    assert memory["held after the logged step"] == memory["held after the quiet step that follows"] == 2 * wte
    assert "| hf_gpt2: one training step |" in (tmp_path / "bench.md").read_text()


@pytest.mark.slow
def test_distributed_rows_measure_two_processes_against_one():
    from conftest import ROOT
    from experiments.benchmark import distributed_markdown, distributed_speed

    rows = distributed_speed(n_train=1024, epochs=1, root=ROOT)
    assert list(rows) == ["1 process", "2 processes"]
    one, two = rows.values()
    assert one["processes"] == 1 and two["processes"] == 2 and one["reduce_calls"] == 0
    assert two["steps"] == one["steps"] == 4  # the global batch (256): the same steps in 2 processes
    assert two["reduce_calls"] >= two["steps"] and two["reduce_ms_per_logged_step"] > 0  # every step logs there
    md = "\n".join(distributed_markdown(rows))
    assert "| 2 processes |" in md and "| 1 process |" in md and "| none |" in md
