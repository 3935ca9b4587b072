"""One run in several processes (torchrun, 2 CPU processes on gloo) against the same run in one process:
every logged number, the final weights, one run folder; agreed stops and their resume; a rank that
crashes; the errors that refuse a distributed run; no collective of ours on a quiet step.

The multi-process tests start real ``torchrun``s (``python -m torch.distributed.run``) and are marked slow.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, read_events, run_cli
from experiments import distributed
from experiments.errors import ConfigError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0",
       "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}


def torchrun_command(args, nproc=2, script="train.py"):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(ROOT / script), *args]


def torchrun(args, nproc=2, cwd=ROOT, timeout=300):
    return subprocess.run(torchrun_command(args, nproc), cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def one_process(args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def scalars(run_dir):
    acc = read_events(run_dir)
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def final_weights(run_dir):
    return torch.load(Path(run_dir) / "weights_final.pt", weights_only=True)["state_dict"]


# --- without a process group: the environment, the split, the checks --------------------------------

def test_torchrun_and_slurm_environments_say_where_the_ranks_meet():
    assert distributed.launch({}) is None
    assert distributed.launch({"RANK": "0", "WORLD_SIZE": "1"}) is None  # a world of one is one process
    torchrun = distributed.launch({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                   "TORCHELASTIC_RUN_ID": "x"})
    assert (torchrun.rank, torchrun.world, torchrun.local_rank, torchrun.init_method, torchrun.launcher) == \
        (1, 4, 1, "env://", "torchrun")
    slurm = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
             "SLURM_JOB_NODELIST": "gpu[07-08,11],cpu1", "SLURM_JOB_ID": "12345"}
    where = distributed.launch(slurm)
    assert (where.rank, where.world, where.local_rank, where.launcher) == (3, 4, 1, "slurm")
    assert where.init_method == "tcp://gpu07:22345"
    assert distributed.launch({**slurm, "MASTER_PORT": "29400"}).init_method == "tcp://gpu07:29400"
    assert distributed.launch({**slurm, "SLURM_NTASKS": "1"}) is None
    batch_script = {k: v for k, v in slurm.items() if k != "SLURM_STEP_ID"}  # not a task of srun: one process
    assert distributed.launch(batch_script) is None
    assert [distributed.first_host(n) for n in ("node1", "n[3-5]", "a[009,2]-ib,b1", "x,y")] == \
        ["node1", "n3", "a009-ib", "x"]


def test_a_batch_is_split_into_each_rank_share_and_uneven_shares_are_weighted():
    x, y = torch.arange(18.0).reshape(9, 2), torch.arange(9)
    parts = [distributed.shard(x, y, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert [p[0].shape[0] for p in parts] == [4, 5]
    # an uneven share: each rank's sum times its scale, averaged over ranks, is the global mean
    losses = torch.arange(9.0)
    assert sum(losses[4 * r:4 * r + 4 + r].sum() * parts[r][2] for r in range(2)) / 2 == pytest.approx(4.0)
    assert distributed.shard(x[:8], y[:8], 1, 2)[2] is None  # even: plain means


def test_errors_that_refuse_a_distributed_run_name_the_key():
    with pytest.raises(ConfigError, match=r"data.batch_size=30 .* 4 processes.*multiple of 4.*28 or 32"):
        distributed.check_batch(30, 4)
    distributed.check_batch(32, 4)
    with pytest.raises(ConfigError, match="trainer.distributed.backend='mpi': unknown backend"):
        distributed.choose_backend("mpi", "cpu")
    assert distributed.choose_backend("auto", "cpu") == "gloo"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="backend=nccl: this machine has no CUDA device"):
            distributed.choose_backend("nccl", "auto")
    with pytest.raises(ConfigError, match=r"'1' \(BatchNorm1d\).*LayerNorm instead"):
        distributed.check_model(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)), 2)
    with pytest.raises(ConfigError, match=r"'0' \(Dropout\).*random masks"):
        distributed.check_model(torch.nn.Sequential(torch.nn.Dropout(0.1)), 2)
    distributed.check_model(torch.nn.Sequential(torch.nn.Dropout(0.0), torch.nn.LayerNorm(2)), 2)


# --- two processes against one --------------------------------------------------------------------------

SHARED = {  # the models whose parameters are shared, with a use scaled by model.grad_scale; epochs end in an
    # uneven batch (n_train not a multiple of the batch, the last batch odd: the ranks' shares differ)
    "tied_lm": ["model=tied_lm", "data=zipf_text", "data.n_train=201", "data.n_val=64", "data.batch_size=32",
                "model.width=8", "model.hidden=16", "data.vocab=50", "optim=adam", "optim.lr=0.01",
                "+model.grad_scale={0.weight: 10.0}"],
    "rnn": ["model=rnn", "data=zipf_text", "data.context=4", "data.n_train=203", "data.n_val=64", "data.vocab=40",
            "data.batch_size=32", "model.width=8", "init=recurrent", "+model.grad_scale={1.t1.weight_hh: 0.5}"],
    "shared_depth": ["model=shared_depth", "data=digits", "model.depth=3", "model.width=16", "data.batch_size=128",
                     "optim=adam", "optim.lr=0.003", "+model.grad_scale={2.inner.weight: 2.0}"],
}
EXACT = ("dead_frac", "rows_touched")  # fractions of counts: the same counts, the same numbers


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(SHARED))
def test_two_processes_log_every_number_one_process_logs(model, tmp_path):
    args = [*SHARED[model], "trainer.epochs=2", "telemetry=all", "telemetry.histograms.every=4"]
    one = one_process([*args, f"hydra.run.dir={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(args, cwd=tmp_path)  # its own time-stamped folder, as a user gets it
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # one run folder, written by rank 0 alone
    run = runs[0]
    files = lambda folder: sorted(p.name.split(".out.")[0] for p in folder.iterdir())  # noqa: E731
    assert files(run) == files(tmp_path / "one")  # the same files (event files named by their time and pid)
    assert "failure.txt" not in os.listdir(run)
    expected, got = scalars(tmp_path / "one"), scalars(run)
    assert set(got) == set(expected)
    assert any("/use/" in tag for tag in got) and any(tag.startswith("act/") for tag in got)
    for tag, points in expected.items():
        assert sorted(got[tag]) == sorted(points), tag
        for step, value in points.items():
            if tag.endswith(EXACT):
                assert got[tag][step] == value, (tag, step)
            else:
                assert got[tag][step] == pytest.approx(value, rel=1e-5, abs=1e-6), (tag, step)
    for sub in ("uses",):  # each use's own sub-run too
        for folder in (tmp_path / "one" / sub).iterdir():
            assert scalars(folder).keys() == scalars(run / sub / folder.name).keys()
    weights, reference = final_weights(run), final_weights(tmp_path / "one")
    for name in reference:
        assert torch.allclose(weights[name], reference[name], rtol=1e-5, atol=1e-6), name
    acc = read_events(run)
    assert {t for t in acc.Tags()["histograms"]} == {t for t in read_events(tmp_path / "one").Tags()["histograms"]}
