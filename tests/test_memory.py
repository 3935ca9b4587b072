"""Huge sizes are refused before they allocate, naming the keys, what they would take and what the machine has;
an allocation that still fails is one paragraph in failure.txt. (The sizes are far beyond any machine.)"""

import resource
import sys
import time

import pytest
import torch

from conftest import run_cli
from experiments.config import compose_config
from experiments.failures import run_and_report
from experiments.memory import available, count_modules, measure_on_meta
from experiments.training import train

TOKENS = ["data=zipf_text", "model=tied_lm"]
HUGE = {  # overrides -> the start of the paragraph (the keys), and what it says about the size
    "model.width=100000000": ("model.width=100000000, data.n_val=1000: model=mlp with these sizes would take at least",
                              "749.5 GiB on cpu"),
    "model.depth=100000000": ("model.layers[0].repeat=100000000 (from model.depth): model=mlp's layers make "
                              "200,000,001 module objects, which would take at least", "372.5 GiB"),
    "model=tied_lm data=zipf_text data.vocab=200 model.hidden=1000000000":
        ("model.hidden=1000000000, data.n_val=4000: model=tied_lm with these sizes would take at least", "TiB on cpu"),
    "data=zipf_text model=tied_lm data.vocab=10000000000": (
        "data.vocab=10000000000, data.successors=3: data=zipf_text: the language's successor table (3 couplings of "
        "10,000,000,000 tokens) would take at least", "2.7 TiB"),
    "data=zipf_text model=tied_lm data.context=100000000": (
        "data.context=100000000, data.n_train=20000, data.n_val=4000: data=zipf_text: its 24,000 windows of "
        "100,000,000 tokens would take at least", "17.5 TiB"),
    "data=zipf_text model=tied_lm data.successors=100000000": (
        "data.successors=100000000: more than the data.vocab=1000 tokens; a token has at most 1000 likely "
        "successors.", ""),
    "data.n_train=100000000000": ("data.n_train=100000000000, data.n_val=1000: data=synthetic: 100,000,001,000 rows "
                                  "of 4 features and a target would take at least", "1.8 TiB"),
}


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.parametrize("overrides", list(HUGE))
def test_huge_sizes_are_refused_before_they_allocate(tmp_path, overrides):
    """What train.py does with the composed config: exit 1 within seconds, one paragraph naming the keys in
    failure.txt (and nothing else written), the process's peak memory unchanged."""
    run_dir = tmp_path / "run"
    before, started = peak_rss(), time.perf_counter()
    with pytest.raises(SystemExit) as exited:
        run_and_report(train, compose_config(overrides.split()), run_dir, {}, multirun=False)
    assert exited.value.code == 1
    assert time.perf_counter() - started < 10  # no loop over 1e8 layers, tokens or couplings
    assert peak_rss() - before < 300 * 2 ** 20  # nothing of that size was allocated
    start, size = HUGE[overrides]
    failure = (run_dir / "failure.txt").read_text()
    assert failure.startswith("ConfigError: " + start) and size in failure, failure
    assert failure.count("\n") == 1  # one paragraph
    assert "this machine has" in failure or "successors" in overrides
    assert [p.name for p in run_dir.iterdir()] == ["failure.txt"]


def test_the_cli_refuses_a_huge_width_at_once(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["model.width=100000000", f"hydra.run.dir={run_dir}"], timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    assert "ConfigError: model.width=100000000, data.n_val=1000: model=mlp with these sizes would take" in output
    assert (run_dir / "failure.txt").read_text().startswith("ConfigError: model.width=100000000")
    assert not [p for p in run_dir.rglob("*") if p.name.startswith("events.out") or p.suffix == ".pt"]


@pytest.mark.slow
def test_an_allocation_that_still_fails_is_one_paragraph(tmp_path):
    """The estimate lets the run through (its validation pass needs about 2.4 GB: the machine has that), but the
    process may map only 2 GB (ulimit -v): the validation pass's 1.2 GB allocation fails. One paragraph with
    torch's words and the limit, failure.txt, exit 1, no traceback."""
    assert available()[0] > 4 * 2 ** 30, "this test needs 4 GB of free memory for the estimate to pass"
    limit = 2 * 10 ** 9
    run_dir = tmp_path / "run"
    result = run_cli(["model.width=300000", "data.n_train=32", "optim.lr=1e-6", "trainer.epochs=1",
                      f"hydra.run.dir={run_dir}"], timeout=120,
                     preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    failure = (run_dir / "failure.txt").read_text()
    assert failure.startswith("OutOfMemory: ran out of memory (")
    assert "you tried to allocate 1200000000 bytes" in failure
    assert "this process may map at most 1.9 GiB (ulimit -v)" in failure and failure.count("\n") == 1
    assert (run_dir / "weights_init.pt").exists() and not (run_dir / "weights_final.pt").exists()


def test_count_modules_without_building_them():
    spec = [{"repeat": 1000, "body": [{"_target_": "torch.nn.Linear"}, {"_target_": "torch.nn.ReLU"}]},
            {"repeat": 3, "name": "block {i}", "body": [{"sequential": [{"_target_": "torch.nn.Linear"}]}, "shared"]},
            {"_target_": "torch.nn.Linear"}]
    assert count_modules(spec) == 2000 + 3 * (2 + 1) + 1


def test_meta_measurement_matches_the_real_model_and_leaves_the_rng_alone():
    def build(batch):
        model = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Flatten(), torch.nn.LazyLinear(7))
        model(batch)
        return model

    batch = torch.randint(0, 50, (4, 3))
    state = torch.random.get_rng_state()
    footprint = measure_on_meta(build, batch)
    assert torch.equal(torch.random.get_rng_state(), state)
    real = build(batch)
    assert footprint.parameters == sum(p.numel() * 4 for p in real.parameters()) == (50 * 16 + 48 * 7 + 7) * 4
    assert footprint.activations == 4 * (3 * 16 + 48 + 7) * 4  # every leaf module's output for 4 rows
    assert footprint.widest == 4 * 48 * 4 and footprint.largest[0] == ("0.weight", (50, 16))


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. "
                                   "DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes."),
                                   torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB.")])
def test_out_of_memory_errors_become_one_paragraph(error):
    from experiments.errors import OutOfMemory
    from experiments.memory import out_of_memory

    with pytest.raises(OutOfMemory, match=r"^ran out of memory \(.*\)\. The run needs more memory than this machine "
                                          r"gives it \(.* now"):
        with out_of_memory():
            raise error
    with pytest.raises(RuntimeError, match="mat1 and mat2"):  # any other error is left alone
        with out_of_memory():
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("reads /proc")
