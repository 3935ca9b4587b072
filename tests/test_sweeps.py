"""Sweeps through the real CLI: folder layout, launchers, failing jobs, Optuna, and the report.

The report's numbers are checked against the event files read record by record here (with
TensorBoard's RawEventFileLoader and the Event protobuf, not the EventAccumulator the report uses)."""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF, ROOT, run_cli
from experiments.runs import MAX_NAME, job_dirname

SHORT = ["trainer.epochs=2", "data.n_train=200", "telemetry.histograms.enabled=false"]
GRID = ["init=normal,xavier", "model=mlp,tied"]
JOBS = {f"data.n_train=200,init={i},model={m},telemetry.histograms.enabled=False,trainer.epochs=2"
        for i in ("normal", "xavier") for m in ("mlp", "tied")}


def last_values(run_dir: Path) -> dict:
    """tag -> (step, value) of the last scalar record of each tag, straight from the event files."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    last = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for record in RawEventFileLoader(str(path)).Load():
            event = Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    last[value.tag] = (event.step, value.simple_value)
    return last


def sweep_folder(outputs: Path) -> Path:
    (folder,) = list((outputs / "multirun").glob("*/*"))
    return folder


def report(folder: Path, *extra: str, returncode: int = 0) -> subprocess.CompletedProcess:
    result = run_cli([str(folder), *extra], script="scripts/report.py", timeout=120)
    assert result.returncode == returncode, result.stdout + result.stderr  # 1: a job failed
    return result


def read_csv(folder: Path) -> dict:
    with open(folder / "report.csv") as f:
        return {row["job"]: row for row in csv.DictReader(f)}


def assert_png(path: Path) -> None:
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.load()  # decodes every pixel
        assert image.width > 100 and image.height > 100


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("basic")
    result = run_cli(["-m", *GRID, *SHORT], cwd=cwd, timeout=240)
    assert result.returncode == 0, result.stderr
    return sweep_folder(cwd / "outputs"), result


def test_sweep_jobs_are_named_by_their_overrides(basic_sweep):
    folder, _ = basic_sweep
    assert folder.parent.parent.name == "multirun"  # outputs/multirun/<date>/<time>
    jobs = {p.name for p in folder.iterdir() if p.is_dir()}
    assert jobs == JOBS
    for job in jobs:
        assert list((folder / job).glob("events.out.tfevents.*"))
        assert (folder / job / "weights_final.pt").exists()


def summary_of(result: subprocess.CompletedProcess) -> str:
    """The sweep's closing summary: its last lines, from 'sweep finished' on."""
    out = result.stdout + result.stderr
    assert "sweep finished: " in out, out[-1000:]
    return out[out.rindex("sweep finished: "):]


def test_a_successful_sweep_ends_with_a_summary(basic_sweep):
    """Counts, the best job (checked against the event files) with its loss/val, the report command."""
    folder, result = basic_sweep
    summary = summary_of(result)
    finals = {job: last_values(folder / job)["loss/val"][1] for job in JOBS}
    best = min(finals, key=finals.get)
    assert summary.startswith(f"sweep finished: 4 job(s) in {folder.relative_to(folder.parents[3])}: 4 ok\n")
    assert f"  best: {best}  loss/val {finals[best]:.6g}\n" in summary
    assert f"  report: python scripts/report.py {folder.relative_to(folder.parents[3])}" in summary
    assert "failed" not in summary


def test_hparams_tab_has_a_session_per_job_with_its_settings(basic_sweep):
    """What TensorBoard's HParams plugin serves for the sweep: one session per job, with the
    job's choices and its final loss/val."""
    from google.protobuf import json_format
    from tensorboard import context
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    folder, _ = basic_sweep
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(folder))
    mux.Reload()
    tb = base_plugin.TBContext(logdir=str(folder), data_provider=MultiplexerDataProvider(mux, str(folder)),
                               multiplexer=mux)
    request = json_format.Parse(  # what the dashboard asks for, with every status shown
        '{"startIndex": 0, "sliceSize": 100, "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS",'
        ' "STATUS_FAILURE", "STATUS_RUNNING"], "colParams": [{"metric": {"tag": "loss/val"}},'
        ' {"hparam": "init"}, {"hparam": "model"}]}', api_pb2.ListSessionGroupsRequest())
    groups = list_session_groups.Handler(context.RequestContext(), backend_context.Context(tb), "", request).run()
    sessions = {g.name: g for g in groups.session_groups}
    assert set(sessions) == JOBS
    for name, group in sessions.items():
        assert f"init={group.hparams['init'].string_value}" in name
        assert f"model={group.hparams['model'].string_value}" in name
        # only what the sweep varies (init, model): not the overrides every job shares (trainer.epochs, ...)
        # and not the dozens of defaults, so that TensorBoard's first columns are the ones that differ
        assert set(group.hparams) == {"init", "model"}, set(group.hparams)
        (metric,) = [m for m in group.metric_values if m.name.tag == "loss/val"]
        assert metric.value == pytest.approx(last_values(folder / name)["loss/val"][1], rel=1e-6)


def test_report_rows_equal_the_event_files(basic_sweep):
    folder, _ = basic_sweep
    result = report(folder)
    rows = read_csv(folder)
    assert set(rows) == JOBS
    for job, row in rows.items():
        last = last_values(folder / job)
        assert row["status"] == "ok"
        assert float(row["loss/val"]) == last["loss/val"][1]
        assert float(row["loss/train"]) == last["loss/train"][1]
        assert int(row["steps"]) == max(step for step, _ in last.values()) == 14  # 2 epochs of 7 batches
        assert float(row["wall_time_s"]) > 0
        assert set(row["overrides"].split()) == {o for o in job.split(",") if o.split("=")[0] in ("init", "model")}
        if "model=tied" in job:
            final = torch.load(folder / job / "weights_final.pt", weights_only=True)["state_dict"]
            for name in ("2.weight", "2.bias"):
                assert float(row[f"norm {name}"]) == last[f"param_norm/{name}"][1]
                assert float(row[f"norm {name}"]) == pytest.approx(final[name].norm().item(), rel=1e-6)  # final
                assert float(row[f"cancellation {name}"]) == last[f"tied/{name}/cancellation"][1]
        else:  # the mlp's 2.weight is not tied
            assert row["norm 2.weight"] == row["cancellation 2.weight"] == ""
    # sorted by validation loss, and the table printed
    ranked = sorted(rows.values(), key=lambda r: int(r["rank"]))
    assert [float(r["loss/val"]) for r in ranked] == sorted(float(r["loss/val"]) for r in ranked)
    # report.md shows only what differs between the jobs (every job is ok, with 14 steps), of the tied
    # parameters the one its headline shows; report.csv has every column
    header = "| rank | job | wall_time_s | loss/train | loss/val | norm 2.weight | cancellation 2.weight |"
    assert header in result.stdout and header in (folder / "report.md").read_text()
    assert {"status", "steps", "norm 2.bias", "cancellation 2.bias"} <= set(next(iter(rows.values())))
    for name in ("val_loss.png", "param_norms_normal.png", "param_norms_xavier.png", "tied_grad_norms.png"):
        assert_png(folder / name)


def test_report_on_a_single_run(basic_sweep, tmp_path):
    """A run's folder (here a copy of one job's, so the sweep's own report is untouched)."""
    import shutil

    folder, _ = basic_sweep
    run_dir = tmp_path / "run"
    shutil.copytree(folder / sorted(JOBS)[1], run_dir)  # init=normal, model=tied
    report(run_dir)
    (row,) = read_csv(run_dir).values()
    assert row["job"] == "run" and row["status"] == "ok"
    assert float(row["loss/val"]) == last_values(run_dir)["loss/val"][1]
    assert float(row["cancellation 2.weight"]) == last_values(run_dir)["tied/2.weight/cancellation"][1]
    for name in ("val_loss.png", "param_norms_normal.png", "tied_grad_norms.png"):
        assert_png(run_dir / name)


def test_report_on_a_folder_without_runs_fails_clearly(tmp_path):
    result = run_cli([str(tmp_path)], script="scripts/report.py")
    assert result.returncode == 2 and "no runs under" in result.stderr


def test_failing_jobs_do_not_sink_the_sweep(tmp_path):
    """lr=1e4 diverges; Softmax2d raises (an unexpected error) in every job that uses it."""
    result = run_cli(["-m", "optim.lr=0.01,1e4,0.03", "model.activation=torch.nn.ReLU,torch.nn.Softmax2d",
                      "trainer.epochs=1", "data.n_train=200"], cwd=tmp_path, timeout=240)
    folder = sweep_folder(tmp_path / "outputs")
    jobs = {p.name: p for p in folder.iterdir() if p.is_dir()}
    assert len(jobs) == 6
    ok = {n for n in jobs if "ReLU" in n and "10000.0" not in n}
    assert len(ok) == 2
    assert result.returncode != 0
    for name, path in jobs.items():
        if name in ok:
            assert (path / "weights_final.pt").exists() and not (path / "failure.txt").exists()
        else:
            reason = (path / "failure.txt").read_text()
            assert ("diverged" in reason) if "ReLU" in name else ("Softmax2d" in reason)
            assert f"  failed: {name}: " in summary_of(result)  # the sweep's last words name each failed job
    summary = summary_of(result)
    assert ": 2 ok, 4 failed\n" in summary.splitlines()[0] + "\n" and "4 job(s) failed" in summary
    finals = {name: last_values(jobs[name])["loss/val"][1] for name in ok}
    assert f"  best: {min(finals, key=finals.get)}  loss/val " in summary
    report(folder, "--no-figures", returncode=1)
    rows = read_csv(folder)
    ranked = sorted(rows.values(), key=lambda r: int(r["rank"]))
    assert {r["job"] for r in ranked[:2]} == ok and all(r["status"] == "ok" for r in ranked[:2])
    assert all(r["status"] == "failed" for r in ranked[2:])
    text = (folder / "report.md").read_text()
    assert "## Failed jobs" in text and text.count("**FAILED**") == 4 and "diverged at step" in text
    for row in ranked[2:]:  # a diverged job's steps: where it diverged, not its last logged point (step 1)
        reason = (folder / row["job"] / "failure.txt").read_text()
        named = re.search(r"diverged at step (\d+)", reason)
        if named:  # (the Softmax2d jobs fail before their first step)
            assert int(row["steps"]) == int(named.group(1)) > 1, (row, reason)


def test_two_sweeps_at_the_same_time_get_their_own_folders(tmp_path):
    """A time stamp coarse enough that both sweeps get the same one: the second takes <stamp>-2."""
    args = [sys.executable, str(ROOT / "train.py"), "-m", "trainer.epochs=1", "data.n_train=64",
            "telemetry.enabled=false", f"hydra.sweep.dir={tmp_path}/sweeps/" + "${now:%Y-%m-%d}"]
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [subprocess.Popen(args + [f"trainer.seed={seed}"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    folders = sorted((tmp_path / "sweeps").iterdir(), key=lambda p: len(p.name))
    assert len(folders) == 2 and folders[1].name == folders[0].name + "-2"
    seeds = sorted(OmegaConf.load(next(f.glob("*/.hydra/config.yaml"))).trainer.seed for f in folders)
    assert seeds == [1, 2]  # each sweep's job is in its own sweep's folder
    for f in folders:
        assert len([p for p in f.iterdir() if p.is_dir()]) == 1


def test_figure_labels_shorten_long_floats_so_every_override_shows():
    from experiments.report_figures import _label, short_floats
    from experiments.runs import Job

    overrides = ["init.std=0.0018023233912524133", "model.width=32", "optim.lr=0.00012345678901234567"]
    label = _label(Job(Path("x"), "trial=0"), overrides)
    assert label == "init.std=0.001802 model.width=32 optim.lr=0.0001235"
    assert short_floats("lr=1e-05 lr=10000.0 lr=0.03 seed=12345678 a.b=3.14159265358979") == \
        "lr=1e-05 lr=10000.0 lr=0.03 seed=12345678 a.b=3.142"


def test_a_failed_jobs_steps_are_where_it_failed_not_its_last_logged_point():
    from experiments.runs import Job

    curves = {"loss/train": [(1, 0.0, 2.0)], "param_norm/0.weight": [(1, 0.0, 1.0)]}
    diverged = Job(Path("x"), "j", status="failed", curves=curves,
                   reason="Diverged: training diverged at step 5: the loss is nan; first parameter ... 0.weight.")
    assert diverged.steps == 5
    by = Job(Path("x"), "j", status="failed", curves=curves, reason="Diverged: training diverged by step 64: ...")
    assert by.steps == 64
    crashed = Job(Path("x"), "j", status="failed", curves=curves, reason="RuntimeError: shapes (3) and (4)")
    assert crashed.steps == 1  # nothing better known: the last point logged
    assert Job(Path("x"), "j", status="ok", curves=curves, reason="").steps == 1


def test_sweep_summary_removes_submitits_empty_id_template_folder(tmp_path, caplog):
    """submitit's local launcher leaves an empty literal .submitit/%j; the job files' folders stay."""
    from experiments.sweeps import SweepSummary

    (tmp_path / ".submitit" / "%j").mkdir(parents=True)
    (tmp_path / ".submitit" / "2275").mkdir()
    (tmp_path / ".submitit" / "2275" / "2275_0_log.out").write_text("log")
    (tmp_path / "init=xavier" / ".hydra").mkdir(parents=True)  # a job that neither finished nor failed
    caplog.set_level("INFO")
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert sorted(p.name for p in (tmp_path / ".submitit").iterdir()) == ["2275"]
    assert f"sweep finished: 1 job(s) in {tmp_path}: 1 incomplete" in caplog.text
    assert "incomplete (neither finished nor failed): init=xavier" in caplog.text


def test_job_dirname():
    assert job_dirname("init=xavier,model=tied") == "init=xavier,model=tied"
    assert job_dirname("") == "defaults"
    assert job_dirname("data.path=/data/a.csv,data=csv") == "data.path=%2Fdata%2Fa.csv,data=csv"
    assert job_dirname("x=50%") == "x=50%25"
    long_a, long_b = "a=" + "x" * 300, "a=" + "x" * 299 + "y"
    assert len(job_dirname(long_a).encode()) <= MAX_NAME and job_dirname(long_a) != job_dirname(long_b)


def test_slurm_launcher_config_composes():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=cluster", "hydra.launcher.partition=gpu",
                                           "hydra.launcher.gpus_per_node=1"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("ClusterLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.cpus_per_task, launcher.gpus_per_node) == ("gpu", 60, 1, 1)


def test_joblib_launcher_runs_the_sweep_in_parallel_processes(tmp_path):
    result = run_cli(["-m", *GRID, *SHORT, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], cwd=tmp_path,
                     timeout=300)
    assert result.returncode == 0, result.stderr
    folder = sweep_folder(tmp_path / "outputs")
    assert {p.name for p in folder.iterdir() if p.is_dir()} == JOBS
    pids = {p.name.split(".")[-2] for p in folder.glob("*/events.out.tfevents.*")}  # <time>.<host>.<pid>.<n>
    assert len(pids) >= 2
    for job in JOBS:
        assert last_values(folder / job)["loss/val"][0] == 14


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    result = run_cli(["-m", *GRID, *SHORT, "hydra/launcher=submitit_local"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    folder = sweep_folder(tmp_path / "outputs")
    assert {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")} == JOBS
    assert list(folder.glob(".submitit/*")) and not list(folder.glob(".submitit/%*"))  # no literal %j left
    for job in JOBS:
        assert last_values(folder / job)["loss/val"][0] == 14
    report(folder, "--no-figures")
    assert all(row["status"] == "ok" for row in read_csv(folder).values())


@pytest.mark.slow  # (over 8 s: the default suite stays under 5 minutes; .ci/run runs it)
def test_optuna_preset_records_its_best_parameters(tmp_path):
    result = run_cli(["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "trainer.epochs=1",
                      "data.n_train=200", "telemetry.enabled=false"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    folder = sweep_folder(tmp_path / "outputs")
    trials = sorted(p for p in folder.iterdir() if p.is_dir())
    assert [p.name.split(",")[0] for p in trials] == ["trial=0", "trial=1", "trial=2"]
    best = OmegaConf.load(folder / "optimization_results.yaml")
    assert set(best.best_params) == {"optim.lr", "init.std", "model.width"}
    finals = {}
    for trial in trials:
        cfg = OmegaConf.load(trial / ".hydra" / "config.yaml")
        assert cfg.init.name == "normal"  # the preset's scheme, whose std it searches
        assert 0.001 <= cfg.optim.lr <= 0.1 and 0.001 <= cfg.init.std <= 0.3 and cfg.model.width in (4, 8, 16, 32, 64)
        finals[(cfg.optim.lr, cfg.init.std, cfg.model.width)] = last_values(trial)["loss/val"][1]
    best_key = (best.best_params["optim.lr"], best.best_params["init.std"], best.best_params["model.width"])
    assert finals[best_key] == min(finals.values()) == pytest.approx(best.best_value, rel=1e-6)
    report(folder, "--no-figures")
    assert "Optuna's best trial" in (folder / "report.md").read_text()
    assert not math.isnan(float(sorted(read_csv(folder).values(), key=lambda r: int(r["rank"]))[0]["loss/val"]))


def test_report_calls_a_run_with_a_damaged_event_file_failed(tmp_path):
    """TensorBoard's reader stops silently at a damaged record; the report says so instead of "ok"."""
    from experiments.config import compose_config
    from experiments.report import write_report
    from experiments.training import train

    run_dir = tmp_path / "run"
    train(compose_config(["trainer.epochs=2", "data.n_train=200"]), run_dir)
    (events,) = run_dir.glob("events.out.tfevents.*")
    data = bytearray(events.read_bytes())
    data[len(data) // 2] ^= 0xFF
    events.write_bytes(bytes(data))
    written = write_report(run_dir, figures=False)
    assert written.failed == ["run"]
    assert f"its event file {events.name} cannot be read to the end: the record at byte" in written.text
    assert "is damaged (its checksum does not match)" in written.text


@pytest.mark.slow  # (over 8 s: the default suite stays under 5 minutes; .ci/run runs it)
def test_a_presets_sweep_is_reported_whole(tmp_path):
    """An experiment preset sweeps through ``hydra.sweeper.params``, not the command line: the report
    predicts its job folders from both, so no job is called "never started" (it once listed one
    named "defaults")."""
    from experiments.runs import expected_jobs

    result = run_cli(["-m", "experiment=shared_depth", "trainer.epochs=1", "telemetry.tied.every=5"],
                     cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr
    folder = sweep_folder(tmp_path / "outputs")
    jobs = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert jobs == [f"model.depth={d},telemetry.tied.every=5,trainer.epochs=1" for d in (2, 4, 8)]
    assert sorted(expected_jobs(folder)) == jobs
    out = report(folder).stdout
    assert "3 run(s)" in out and "never started" not in out
