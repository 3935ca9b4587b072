"""Run folders read as data that may be hostile (``run_files``, ``event_records``): the report, a sweep's
summary and inspection open only regular files inside the folder, bound what they read, and call a job
whose files cannot be read failed, with a one-line reason naming the file, instead of hanging, running
for minutes, or dying in a MemoryError. Every CLI here runs under a timeout: a hang fails the test."""

from __future__ import annotations

import csv
import os
import runpy
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, read_events, run_cli
from experiments.config import compose_config
from experiments.errors import UnreadableFile
from experiments.event_records import MAX_RECORD_BYTES, MAX_RUN_EVENT_BYTES, read_run_events
from experiments.run_files import MAX_YAML_NODES, load_yaml, write_replacing
from experiments.telemetry.events import masked_crc32c
from experiments.training import train

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))  # 10^9


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished run, with the .hydra/ files train.py's Hydra writes (trained here: a CLI run takes 5 s)."""
    run_dir = tmp_path_factory.mktemp("one") / "run"
    overrides = ["model=tied", "trainer.epochs=2", "data.n_train=200", "telemetry.histograms.enabled=false"]
    cfg = compose_config(overrides)
    train(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": {"model": "tied", "init": "default"}}}}),
                   run_dir / ".hydra" / "hydra.yaml")
    return run_dir


def events_of(folder: Path) -> Path:
    (path,) = folder.glob("events.out.tfevents.*")
    return path


EXTRA = "events.out.tfevents.9999999999.host.1.9"  # named as TensorBoard's event files are


def huge_record(job: Path, outside: Path) -> None:
    """A record header claiming 2^62 bytes, with a valid checksum, after the run's last record."""
    header = struct.pack("<Q", 2**62)
    with open(events_of(job), "ab") as f:
        f.write(header + struct.pack("<I", masked_crc32c(header)))


def sparse(job: Path, outside: Path) -> None:
    (job / EXTRA).touch()
    os.truncate(job / EXTRA, 10**11)  # 100 GB of nothing, taking no disk


def fifo_yaml(job: Path, outside: Path) -> None:
    (job / ".hydra" / "hydra.yaml").unlink()
    os.mkfifo(job / ".hydra" / "hydra.yaml")


HOSTILE = {  # job folder -> what is done to a copy of a good run, and the reason the report must give
    "fifo-events": (lambda job, outside: os.mkfifo(job / EXTRA),
                    f"its event file {EXTRA} is not read: it is a FIFO (named pipe), not a regular file"),
    "dev-zero-events": (lambda job, outside: os.symlink("/dev/zero", job / EXTRA),
                        f"its event file {EXTRA} is not read: it is a symbolic link to /dev/zero, outside "),
    "link-out": (lambda job, outside: os.symlink(outside, job / EXTRA),
                 f"its event file {EXTRA} is not read: it is a symbolic link to "),
    "huge-record": (huge_record, f"cannot be read to the end: the record at byte "),
    "sparse": (sparse, f"its event file {EXTRA} is not read: it holds 100000000000 bytes, more than the "
                       f"{MAX_RUN_EVENT_BYTES} a run's event files may have in all"),
    "alias-bomb": (lambda job, outside: (job / ".hydra" / "overrides.yaml").write_text(BOMB),
                   f"its .hydra/overrides.yaml is not read: its aliases expand it beyond {MAX_YAML_NODES} nodes"),
    "fifo-yaml": (fifo_yaml, "its .hydra/hydra.yaml is not read: it is a FIFO (named pipe), not a regular file"),
    "fifo-failure": (lambda job, outside: os.mkfifo(job / "failure.txt"),
                     "its failure.txt is not read: it is a FIFO (named pipe), not a regular file"),
}


def test_the_report_of_a_hostile_folder_fails_each_damaged_job_in_one_line_and_never_hangs(run, tmp_path):
    sweep, outside = tmp_path / "sweep", tmp_path / "outside.events"
    shutil.copy(events_of(run), outside)
    shutil.copytree(run, sweep / "good")
    for name, (damage, _) in HOSTILE.items():
        shutil.copytree(run, sweep / name)
        damage(sweep / name, outside)
    secret = tmp_path / "not-yours.txt"
    secret.write_text("keep me\n")
    os.symlink(secret, sweep / "report.md")  # the report replaces the link, it does not write through it

    started = time.time()
    result = run_cli([str(sweep), "--no-figures"], script="scripts/report.py", timeout=60)
    assert time.time() - started < 60
    said = result.stdout + result.stderr
    assert result.returncode == 1, said
    assert "Traceback" not in said and "MemoryError" not in said
    with open(sweep / "report.csv") as f:
        rows = {row["job"]: row for row in csv.DictReader(f)}
    assert rows["good"]["status"] == "ok"
    assert float(rows["good"]["loss/val"]) == read_events(run).Scalars("loss/val")[-1].value
    text = (sweep / "report.md").read_text()
    for name, (_, reason) in HOSTILE.items():
        assert rows[name]["status"] == "failed", name
        (line,) = [line for line in text.splitlines() if line.startswith(f"- `{name}`: ")]
        assert reason in line, (name, line)
    assert not (sweep / "report.md").is_symlink() and secret.read_text() == "keep me\n"
    # the curves before the damage are still read, and the good records of the damaged file
    assert rows["huge-record"]["loss/val"] == rows["good"]["loss/val"]


def test_inspection_refuses_hostile_run_files_in_one_line(run, tmp_path, capsys):
    inspect = runpy.run_path(str(ROOT / "scripts" / "inspect_params.py"))["main"]
    bomb, zero = tmp_path / "bomb", tmp_path / "zero"
    shutil.copytree(run, bomb)
    (bomb / ".hydra" / "config.yaml").write_text(BOMB)
    shutil.copytree(run, zero)
    (zero / "weights_final.pt").unlink()
    os.symlink("/dev/zero", zero / "weights_final.pt")
    for folder, expected in ((bomb, f"{bomb / '.hydra' / 'config.yaml'} is not read: its aliases expand it beyond"),
                             (zero, f"{zero / 'weights_final.pt'} is not read: it is a symbolic link to /dev/zero")):
        assert inspect([f"run={folder}"]) == 1
        said = capsys.readouterr().err
        assert said.startswith("error: ") and expected in said and len(said.strip().splitlines()) == 1, said
    assert inspect([f"run={run}"]) == 0  # the run itself is fine
    assert "== parameters" in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_report_into_a_read_only_folder_says_so_and_out_writes_it_elsewhere(run, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], check=True)
    try:
        shutil.copytree(run, folder / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        result = run_cli([str(folder / "run"), "--no-figures"], script="scripts/report.py", timeout=60)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip() == (
            f"report: cannot write the report into {folder / 'run'}: the file system is read-only. Make the folder "
            f"writable, or choose another folder for it with --out <folder> (python scripts/report.py "
            f"{folder / 'run'} --out <folder>).")
        elsewhere = tmp_path / "reports" / "run"
        result = run_cli([str(folder / "run"), "--out", str(elsewhere)], script="scripts/report.py", timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert sorted(p.name for p in elsewhere.iterdir()) == ["headline.csv", "param_norms_default.png", "report.csv", "report.md",
                                                               "tied_grad_norms.png", "val_loss.png"]
        assert not list(folder.glob("run/report*"))
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(folder)]).returncode == 0:
                break
            time.sleep(0.1)


def test_curves_are_tensorboards_for_a_resumed_run(tmp_path):
    """Two files, the second resuming at step 6 (TensorBoard's purge marker): the points from step 6 on
    are the second file's, as EventAccumulator shows them."""
    from experiments.telemetry.events import EventFile

    first = EventFile(tmp_path)
    for step in range(1, 11):
        first.write_scalars(step, ["loss/train", "other"], [float(step), -float(step)])
    first.close()
    time.sleep(1.1)  # a later file name (the time stamp in seconds)
    second = EventFile(tmp_path, purge_step=6)
    for step in range(6, 13):
        second.write_scalars(step, ["loss/train"], [100.0 + step])
    second.close()
    read = read_run_events(tmp_path)
    acc = read_events(tmp_path)
    for tag in ("loss/train", "other"):
        assert read.curves[tag] == [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)]
    assert [v for _, _, v in read.curves["loss/train"]] == [1, 2, 3, 4, 5, *(100.0 + s for s in range(6, 13))]
    assert read.started == acc.FirstEventTimestamp() and read.problems == []


def test_a_record_longer_than_the_limit_is_refused_before_it_is_read(tmp_path):
    from experiments.telemetry.events import record

    (tmp_path / "events.out.tfevents.1.h.1.0").write_bytes(record(b"x" * (MAX_RECORD_BYTES + 1)))
    (problem,) = read_run_events(tmp_path).problems
    assert problem.text.endswith(f"claims {MAX_RECORD_BYTES + 1} bytes, more than the {MAX_RECORD_BYTES} an event "
                                 f"may have")


def test_yaml_aliases_that_expand_without_bound_or_refer_to_themselves_are_refused(tmp_path):
    (tmp_path / "ok.yaml").write_text("base: &b {lr: 0.1}\nrun: *b\nother: *b\n")
    assert load_yaml(tmp_path / "ok.yaml").other.lr == 0.1  # a few aliases are fine
    for text, why in ((BOMB, "its aliases expand it beyond"), ("a: &a [1, *a]\n", "refers to a node that contains it"),
                      ("[" * 100_000, "nested too deeply")):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(UnreadableFile, match=why):
            load_yaml(tmp_path / "bad.yaml")


def test_a_written_file_replaces_a_link_of_its_name(tmp_path):
    target = tmp_path / "target"
    target.write_text("untouched")
    os.symlink(target, tmp_path / "report.csv")
    write_replacing(tmp_path / "report.csv", b"a,b\n")
    assert target.read_text() == "untouched" and (tmp_path / "report.csv").read_bytes() == b"a,b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv", "target"]
