"""The inspect command and the notebook API, on fresh models and finished runs."""

import json

import pytest
import torch

from conftest import run_cli
from experiments import compose_model, load_run, parameter_table
from experiments.errors import CheckpointError, ConfigError


def inspect(*args):
    return run_cli(list(args), script="scripts/inspect_params.py")


def test_text_output_has_the_seed_facts():
    mlp = inspect("model=mlp", "layer=2")
    assert mlp.returncode == 0, mlp.stderr
    out = mlp.stdout
    for fact in ["0.weight  0.weight  (8, 4)  32", "2.weight  2.weight  (1, 8)  8", "2.bias    2.bias    (1,)    1",
                 "unique parameters: 4 tensors, 49 numbers", "OrderedDict([('weight', tensor([["]:
        assert fact in out, fact
    assert "state_dict: 4 entries, 49 numbers\n" in out  # untied: no note about ties
    nested = inspect("model=nested", "param=0.block 1.2.weight").stdout
    assert "(block 3): Sequential(" in nested and "(1): Linear(in_features=4, out_features=1, bias=True)" in nested
    assert "309 numbers" in nested and "== 0.block 1.2.weight (4, 8) ==" in nested
    assert "grad: None" in nested  # the seed's `net[2].weight.grad == None`
    tied = inspect("model=tied", "init=xavier").stdout
    assert "2.weight  2.weight, 4.weight  (8, 8)  64" in tied
    assert "unique parameters: 6 tensors, 121 numbers" in tied
    assert "state_dict: 8 entries, 193 numbers (more than the unique count: a tied parameter is listed under each " \
           "of its names)" in tied
    assert "2.weight: 2.weight, 4.weight" in tied and "xavier_uniform_()" in tied


def test_json_numbers_equal_the_models_own_statistics():
    result = inspect("model=tied", "init=normal", "format=json")
    data = json.loads(result.stdout)
    model = compose_model(["model=tied", "init=normal"]).model  # same seed: same values
    params = dict(model.named_parameters())
    assert [r["name"] for r in data["parameters"]] == list(params)
    for row in data["parameters"]:
        w = params[row["name"]].detach().double()
        assert row["mean"] == pytest.approx(w.mean().item())
        assert row["std"] == pytest.approx(w.std().item() if w.numel() > 1 else 0.0)
        assert row["min"] == pytest.approx(w.min().item()) and row["max"] == pytest.approx(w.max().item())
        assert row["norm"] == pytest.approx(torch.linalg.vector_norm(w).item())
    assert data["totals"]["unique_numbers"] == 121 and data["ties"]["2.weight"] == ["2.weight", "4.weight"]


def test_unknown_names_list_the_valid_ones():
    layer = inspect("model=mlp", "layer=7")
    assert layer.returncode == 1 and "layer='7': no such layer. Layers: 0, 1, 2." in layer.stderr
    param = inspect("model=tied", "param=9.weight")
    assert param.returncode == 1 and "Parameters: 0.weight, 0.bias, 2.weight, 2.bias, 4.weight" in param.stderr


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("inspect") / "run"
    result = run_cli(["model=tied", "init=xavier", "trainer.epochs=2", "trainer.freeze=[6.bias]",
                      f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr
    return run_dir


def test_compare_init_reports_how_far_training_moved(trained_run):
    result = inspect(f"run={trained_run}", "compare=init", "format=json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)["parameters"]}
    init = torch.load(trained_run / "weights_init.pt", weights_only=True)["state_dict"]
    final = torch.load(trained_run / "weights_final.pt", weights_only=True)["state_dict"]
    for name, row in rows.items():
        moved = (final[name].double() - init[name].double()).norm().item()
        assert row["moved"] == pytest.approx(moved, abs=1e-9)
        assert row["moved_rel"] == pytest.approx(moved / init[name].double().norm().item(), abs=1e-9)
    assert rows["6.bias"]["moved"] == 0.0 and not rows["6.bias"]["requires_grad"]  # frozen: untrained
    assert rows["2.weight"]["moved"] > 0
    text = inspect(f"run={trained_run}", "compare=init").stdout
    assert "moved_rel" in text


def test_run_without_weights_says_what_it_lacks(trained_run, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints/step_9.pt. It has: .*weights_final.pt"):
        load_run(trained_run, "step_9")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text((trained_run / ".hydra" / "config.yaml").read_text())
    result = inspect(f"run={tmp_path}")
    assert result.returncode == 1 and "has no weights at all" in result.stderr


def test_notebook_api_builds_what_a_run_starts_from(trained_run):
    exp = compose_model(["model=tied", "init=xavier"])
    saved = torch.load(trained_run / "weights_init.pt", weights_only=True)["state_dict"]
    assert list(exp.model.state_dict()) == list(saved)
    for name, value in exp.model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    run = load_run(trained_run)
    assert run.model[2] is run.model[4]  # ties hold after loading
    rows = parameter_table(run.model, reference=saved)
    assert [r["name"] for r in rows] == ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]
    assert rows[-1]["moved"] == 0.0


@pytest.fixture(scope="module")
def untrusted_run(trained_run, tmp_path_factory):
    """A copy of a run whose config names os.system as a layer, with a command that leaves a marker."""
    import shutil

    from omegaconf import OmegaConf

    folder = tmp_path_factory.mktemp("untrusted") / "run"
    shutil.copytree(trained_run, folder)
    marker = folder.parent / "marker"
    cfg = OmegaConf.load(folder / ".hydra" / "config.yaml")
    cfg.model.layers[1] = {"_target_": "os.system", "command": f"touch {marker}"}
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    return folder, marker


def test_a_run_folder_that_names_code_is_refused_without_running_it(untrusted_run):
    folder, marker = untrusted_run
    with pytest.raises(ConfigError, match="model.layers\\[1\\]._target_: refused to run 'os.system'"):
        load_run(folder)
    assert not marker.exists()


def test_allow_targets_lets_a_trusted_layer_of_ones_own_in(trained_run, tmp_path, monkeypatch):
    import shutil

    from omegaconf import OmegaConf

    (tmp_path / "mylayers.py").write_text("from torch import nn\n\nclass Same(nn.Identity):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "run"
    shutil.copytree(trained_run, folder)
    cfg = OmegaConf.load(folder / ".hydra" / "config.yaml")
    cfg.model.layers[1] = {"_target_": "mylayers.Same"}  # in place of a ReLU: the weights still fit
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match="refused to run 'mylayers.Same'"):
        load_run(folder)
    assert type(load_run(folder, allow_targets=["mylayers.*"]).model[1]).__name__ == "Same"


INSPECT_CASES = {  # arguments -> (exit code, what the output must say)
    "--help": (0, "Inspect a configured model's parameters"),
    "model.widht=3": (1, "Key 'widht' not in 'ModelConfig'"),
    "run={untrusted}": (1, "refused to run 'os.system': a config read from a run folder is data"),
    "run={broken}": (1, ".hydra/config.yaml cannot be read"),
}


def test_inspect_bad_input_is_one_paragraph(untrusted_run, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    folder, marker = untrusted_run
    broken = tmp_path / "broken"
    (broken / ".hydra").mkdir(parents=True)
    (broken / ".hydra" / "config.yaml").write_text("model: [\n")
    with ThreadPoolExecutor(max_workers=3) as pool:
        args = [case.format(untrusted=folder, broken=broken) for case in INSPECT_CASES]
        results = list(pool.map(inspect, args))
    for (case, (code, message)), result in zip(INSPECT_CASES.items(), results):
        output = result.stdout + result.stderr
        assert result.returncode == code and message in output and "Traceback" not in output, (case, output)
    assert not marker.exists()
