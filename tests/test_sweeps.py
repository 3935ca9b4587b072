"""Sweeps through the real CLI: readable job folders, launchers, failing jobs, Optuna, and the report."""

import csv
import math
import subprocess
import sys

import pytest
import yaml
from matplotlib import image

from conftest import ROOT, read_events, run_cli

SHORT = ["trainer.epochs=2", "data.n_train=256", "data.n_val=128"]
# Hydra names each job's folder after its overrides, keys sorted.
JOBS = {f"data.n_train=256,data.n_val=128,init={i},model={m},trainer.epochs=2" for i in ("normal", "xavier")
        for m in ("mlp", "tied")}


def sweep(tmp_path, *args, short=SHORT, timeout=180):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(["-m", *args, *short, f"hydra.sweep.dir={sweep_dir}"], timeout=timeout)
    return sweep_dir, result


def report(folder):
    return run_cli([str(folder)], script="scripts/report.py")


def check_sweep(sweep_dir, jobs=JOBS):
    folders = {p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}  # submitit: .submitit/
    assert folders == jobs
    for name in folders:
        assert list((sweep_dir / name).glob("events.out.tfevents.*")), name


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    sweep_dir, result = sweep(tmp_path_factory.mktemp("basic"), "init=normal,xavier", "model=mlp,tied")
    assert result.returncode == 0, result.stdout + result.stderr
    return sweep_dir


def test_two_by_two_sweep_and_its_report(basic_sweep):
    check_sweep(basic_sweep)
    result = report(basic_sweep)
    assert result.returncode == 0, result.stderr
    assert "| overrides | status | steps |" in result.stdout  # the table is printed too
    with open(basic_sweep / "report.csv") as f:
        table = list(csv.DictReader(f))
    assert {row["run"] for row in table} == JOBS
    assert all(set(row["overrides"].split(",")) == set(row["run"].split(",")) for row in table)
    losses = [float(row["loss_val"]) for row in table]
    assert losses == sorted(losses)  # best first
    for row in table:  # every number equals what the test reads from the job's own event file
        acc = read_events(basic_sweep / row["run"])
        assert row["status"] == "ok" and int(row["steps"]) == 16  # 256 rows / 32 per batch x 2 epochs
        assert float(row["loss_val"]) == pytest.approx(acc.Scalars("loss/val")[-1].value, rel=1e-5)
        assert float(row["loss_train"]) == pytest.approx(acc.Scalars("loss/train")[-1].value, rel=1e-5)
        if "model=tied" in row["run"]:
            assert float(row["norm 2.weight"]) == pytest.approx(acc.Scalars("param_norm/2.weight")[-1].value, rel=1e-5)
            assert float(row["cancellation 2.weight"]) == pytest.approx(
                acc.Scalars("tied/2.weight/cancellation")[-1].value, rel=1e-5)
        else:
            assert row["norm 2.weight"] == ""
    md = (basic_sweep / "report.md").read_text()
    assert f"Best: `{table[0]['overrides']}`" in md
    for name in ("val_loss.png", "param_norms.png", "tied_grads.png"):
        path = basic_sweep / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert image.imread(path).shape[0] > 100  # decodes as an image


def test_report_on_a_single_run(basic_sweep):
    run = basic_sweep / sorted(JOBS)[0]
    assert report(run).returncode == 0
    assert (run / "report.md").exists() and (run / "val_loss.png").exists()


def test_hparams_of_each_job_are_in_its_own_run(basic_sweep):
    for name in JOBS:
        plugin = read_events(basic_sweep / name).PluginTagToContent("hparams")
        assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(plugin)


def test_joblib_launcher(tmp_path):
    sweep_dir, result = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                              "init=normal,xavier", "model=tied")
    assert result.returncode == 0, result.stdout + result.stderr
    check_sweep(sweep_dir, {job for job in JOBS if "model=tied" in job})


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    sweep_dir, result = sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                              "init=normal,xavier", "model=mlp,tied", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    check_sweep(sweep_dir)


def test_a_diverging_job_does_not_sink_the_sweep(tmp_path):
    sweep_dir, result = sweep(tmp_path, "optim.lr=0.03,0.1", "model=tied", "model.activation=torch.nn.Identity",
                              "trainer.epochs=3", "data.n_train=64", short=[])
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 job(s) of the sweep" in output and "optim.lr=0.1" in output
    ok = next(p for p in sweep_dir.iterdir() if "optim.lr=0.03" in p.name)
    bad = next(p for p in sweep_dir.iterdir() if "optim.lr=0.1" in p.name)
    assert (ok / "weights_final.pt").exists() and "diverged" in (bad / "failure.txt").read_text()
    result = report(sweep_dir)
    assert result.returncode == 1  # the report says a job failed
    with open(sweep_dir / "report.csv") as f:
        table = {row["run"]: row for row in csv.DictReader(f)}
    assert table[ok.name]["status"] == "ok" and table[bad.name]["status"] == "failed"
    assert "diverged" in (sweep_dir / "report.md").read_text()


def test_optuna_preset_records_best_parameters(tmp_path):
    sweep_dir = tmp_path / "optuna"
    result = run_cli(["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "trainer.epochs=1",
                      f"hydra.sweep.dir={sweep_dir}"], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optim.lr", "init.std", "model.width"}
    assert 0.001 <= best["best_params"]["optim.lr"] <= 0.3 and best["best_params"]["model.width"] in (4, 8, 16, 32)
    finals = [read_events(p).Scalars("loss/val")[-1].value for p in sweep_dir.iterdir() if p.is_dir()]
    assert len(finals) == 3 and best["best_value"] == pytest.approx(min(finals), rel=1e-5)


def test_two_sweeps_in_the_same_second_get_their_own_folders(tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "trainer.epochs=1", "data.n_train=64", "telemetry=off"]
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    sweeps = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2, sweeps
