"""The benchmark runs and reports every variant, workload and measurement (no timing assertions)."""

import json

from conftest import run_cli


def test_bench_smoke(tmp_path):
    result = run_cli(["--repeats", "1", "--quick", "--out", str(tmp_path)], script="scripts/bench.py", timeout=300)
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
