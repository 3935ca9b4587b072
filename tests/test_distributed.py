"""One run in several processes (torchrun, 2 CPU processes on gloo) against the same run in one process:
every logged number, the final weights, one run folder; agreed stops and their resume; a rank that
crashes; the errors that refuse a distributed run; no collective of ours on a quiet step.

The multi-process tests start real ``torchrun``s (``python -m torch.distributed.run``) and are marked slow.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, read_events
from experiments import ddp, distributed
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
    parts = [ddp.shard(x, y, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert [p[0].shape[0] for p in parts] == [4, 5]
    # an uneven share: each rank's sum times its scale, averaged over ranks, is the global mean
    losses = torch.arange(9.0)
    assert sum(losses[4 * r:4 * r + 4 + r].sum() * parts[r][2] for r in range(2)) / 2 == pytest.approx(4.0)
    assert ddp.shard(x[:8], y[:8], 1, 2)[2] is None  # even: plain means


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
        ddp.check_model(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)), 2)
    with pytest.raises(ConfigError, match=r"'0' \(Dropout\).*random masks"):
        ddp.check_model(torch.nn.Sequential(torch.nn.Dropout(0.1)), 2)
    ddp.check_model(torch.nn.Sequential(torch.nn.Dropout(0.0), torch.nn.LayerNorm(2)), 2)


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
                assert got[tag][step] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), (tag, step)
    weights, reference = final_weights(run), final_weights(tmp_path / "one")
    for name in reference:
        assert torch.allclose(weights[name], reference[name], rtol=1e-5, atol=1e-6), name
    acc = read_events(run)
    assert {t for t in acc.Tags()["histograms"]} == {t for t in read_events(tmp_path / "one").Tags()["histograms"]}


# --- stopping together, resuming, a rank that crashes -------------------------------------------------

STOP_ARGS = ["model=tied_lm", "data=zipf_text", "data.n_train=2048", "data.n_val=64", "data.batch_size=32",
             "model.width=8", "model.hidden=16", "data.vocab=50", "trainer.epochs=8", "optim=adam", "optim.lr=0.01"]


def workers(agent: subprocess.Popen):
    """torchrun's worker processes: local rank -> pid."""
    found = {}
    for task in Path(f"/proc/{agent.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            rank = [e for e in environ if e.startswith(b"LOCAL_RANK=")]
            if rank:
                found[int(rank[0].split(b"=")[1])] = int(pid)
    return found


def wait_for(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def resume_command(failure: str, *extra):
    """The command failure.txt gives, run the way this test runs torchrun."""
    import shlex

    command = shlex.split(failure.split("Resume with: ")[1].strip())
    assert command[:3] == ["torchrun", "--standalone", "--nproc_per_node=2"] and command[3] == "train.py", command
    return [*command[4:], *extra]


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_at_one_step_and_resumes_exactly(tmp_path):
    reference = torchrun([*STOP_ARGS, f"hydra.run.dir={tmp_path / 'reference'}"])
    assert reference.returncode == 0, reference.stderr[-3000:]
    run_dir = tmp_path / "run"
    agent = subprocess.Popen(torchrun_command([*STOP_ARGS, f"hydra.run.dir={run_dir}"]), cwd=ROOT, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(run_dir / "checkpoints" / "step_00000064.pt", agent)  # the first epoch is done
    os.kill(workers(agent)[1], signal.SIGTERM)
    output = agent.communicate(timeout=120)[0]
    assert agent.returncode != 0
    failure = (run_dir / "failure.txt").read_text()
    assert failure.count("\n") == 1 and "Interrupted: stopped by SIGTERM (caught by 1 of the 2 processes) at step" \
        in failure, failure + output[-3000:]
    step = int(failure.split(" at step ")[1].split(";")[0])
    assert 64 < step < 512
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == step  # one checkpoint there
    assert not (run_dir / "weights_final.pt").exists()
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["last.pt", "step_00000064.pt"]

    shutil.copytree(run_dir, tmp_path / "one")  # to resume in one process too
    resumed = torchrun(resume_command(failure))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (run_dir / "failure.txt").exists()
    expected, weights = final_weights(tmp_path / "reference"), final_weights(run_dir)
    for name in expected:
        assert torch.equal(weights[name], expected[name]), name  # bit for bit
    assert scalars(run_dir) == scalars(tmp_path / "reference")  # every point once, every value the same

    alone = one_process([*STOP_ARGS, f"hydra.run.dir={tmp_path / 'one'}", "trainer.resume=auto"])
    assert alone.returncode == 0, alone.stderr[-3000:]
    weights = final_weights(tmp_path / "one")  # the same global batch in one process: the same model, to rounding
    for name in expected:
        assert torch.allclose(weights[name], expected[name], rtol=1e-4, atol=1e-5), name
    got, want = scalars(tmp_path / "one"), scalars(tmp_path / "reference")
    assert got.keys() == want.keys() and all(got[t].keys() == want[t].keys() for t in want)


@pytest.mark.slow
def test_a_rank_that_raises_stops_the_others_and_failure_txt_names_it(tmp_path):
    layers = ("model.layers=[{_target_: torch.nn.Linear, out_features: 16}, {_target_: torch.nn.ReLU}, "
              "{_target_: distributed_helpers.RaiseOnRank, rank: 1, at: 40}, {_target_: torch.nn.Linear, out_features: 1}]")
    started = time.time()
    result = torchrun(["model=mlp", layers, "data.n_train=20000", "trainer.epochs=50", f"hydra.run.dir={tmp_path}"],
                      timeout=120)
    assert result.returncode != 0
    assert time.time() - started < 60 + 15  # the others stopped (torch's start-up is ~10 s here)
    failure = (tmp_path / "failure.txt").read_text()
    assert "rank 1 of 2: RuntimeError: boom on rank 1 at call 40" in failure, failure + result.stderr[-3000:]
    assert "rank 0 of 2: PeerFailed: rank 0 of 2 stopped at step 39: another process of this run failed" in failure
    assert not (tmp_path / "weights_final.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("override, says", [
    ("data.batch_size=31", "data.batch_size=31 cannot be split evenly across the 2 processes"),
    ("trainer.distributed.backend=mpi", "trainer.distributed.backend='mpi': unknown backend"),
    pytest.param("trainer.distributed.backend=nccl", "backend=nccl: this machine has no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_what_cannot_run_distributed_is_refused_before_training(override, says, tmp_path):
    result = torchrun(["data.n_train=64", override, f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)
    assert result.returncode != 0
    assert says in result.stdout + result.stderr, result.stdout[-2000:] + result.stderr[-2000:]
    assert str(ROOT / "src") not in result.stdout + result.stderr  # one paragraph, no traceback of ours (torchrun
    assert not (tmp_path / "run" / "weights_init.pt").exists()    # prints its own when a process exits non-zero)


@pytest.mark.slow
def test_a_sweep_under_torchrun_is_refused(tmp_path):
    result = torchrun(["-m", "optim.lr=0.1,0.2", f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=120)
    assert result.returncode != 0
    assert "a sweep (-m) under torchrun is not supported" in result.stdout + result.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_quiet_steps_make_no_collective_of_ours(tmp_path):
    """Counted by wrapping every torch.distributed collective: a step that logs nothing makes only DDP's gradient
    all-reduce (one per bucket, which also carries the stop flags); a logged step one more, whatever it logs."""
    out = tmp_path / "counts"
    args = ["model=tied_lm", "data=zipf_text", "data.n_train=640", "data.n_val=64", "data.batch_size=32",
            "model.width=8", "model.hidden=16", "data.vocab=50", "trainer.epochs=2", "telemetry.tied.every=7",
            "telemetry.activations.every=5", "telemetry.loss.every=3", "telemetry.param_norm.every=11",
            "telemetry.grad_norm.every=11", "telemetry.update_ratio.every=11", "telemetry.histograms.every=20"]
    result = subprocess.run(torchrun_command([str(out), *args], script="tests/distributed_helpers.py"), cwd=ROOT,
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in range(2):
        steps = json.loads(Path(f"{out}.rank{rank}.json").read_text())
        assert [s["step"] for s in steps] == list(range(1, 41))
        quiet = [s for s in steps if not s["logs"]]
        assert len(quiet) > 10 and all(s["ours"] == 0 for s in quiet), quiet
        assert all(s["buckets"] >= 1 for s in steps)  # DDP's own, counted through its comm hook
        # at most one on a logged step: what depends on each rank's rows travels as one flat tensor; none where
        # only norms of the (already averaged) gradients and of the weights are due
        batch = [s["step"] for s in steps if s["step"] % 3 == 0 or s["step"] % 5 == 0 or s["step"] % 7 == 0]
        assert [s["step"] for s in steps if s["ours"] == 1] == [1, *batch, *([40] if 40 not in batch else [])]
        assert all(s["ours"] == 0 for s in steps if s["step"] not in [1, 40, *batch])


def test_each_rank_adds_its_own_failure_line_and_the_resume_command_is_torchrun(tmp_path, monkeypatch):
    from experiments.failures import launcher_command, record_failure

    (tmp_path / "failure.txt").write_text("an earlier attempt's failure\n")
    os.utime(tmp_path / "failure.txt", (0, 0))  # older than this process: replaced, not added to
    record_failure(tmp_path, RuntimeError("boom"), rank=(1, 2))
    record_failure(tmp_path, distributed.PeerFailed("gone"), rank=(0, 2))
    assert (tmp_path / "failure.txt").read_text() == "rank 1 of 2: RuntimeError: boom\nrank 0 of 2: PeerFailed: gone\n"
    assert launcher_command() == "python train.py"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "r")
    assert launcher_command() == "torchrun --standalone --nproc_per_node=2 train.py"
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert launcher_command().startswith("torchrun --nnodes=4 --nproc_per_node=2 <the same rendezvous options>")
