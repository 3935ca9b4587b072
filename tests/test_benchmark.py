"""The benchmark runs and reports every variant, workload and measurement (no timing assertions)."""

import json

from conftest import run_cli


def test_bench_smoke(tmp_path):
    result = run_cli(["--repeats", "1", "--quick", "--out", str(tmp_path)], script="scripts/bench.py", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "bench.json").read_text())
    variants = ["plain loop", "ours, telemetry off", "ours, default", "ours, every signal every step"]
    for workload in ("tiny", "wide"):
        assert list(data["workloads"][workload]) == variants
        assert data["workloads"][workload]["plain loop"]["ratio"] == 1.0
        assert all(isinstance(v["steps_per_s"], float) for v in data["workloads"][workload].values())
    assert list(data["logging_growth_us"]) == ["10", "20"]
    assert set(data["cold_start_s"]) == {"import torch", "import torch + one SGD step", "train.py to first step",
                                          "train.py to exit"}
    md = (tmp_path / "bench.md").read_text()
    assert md in result.stdout and "| tiny | ours, every signal every step |" in md
