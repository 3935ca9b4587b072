"""Where conf/ comes from: the project the user stands in, else the copy installed with the package.

The slow test installs the project non-editable (``pip install .``) into a fresh venv and runs
``python train.py`` and ``python scripts/inspect_params.py`` from the project folder, and
``compose_model`` from a folder with no conf/ at all.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONF, ROOT
from experiments import compose_model
from experiments.config import CONF_DIR, PACKAGED_CONF_DIR, find_conf_dir


def copy_conf(project: Path, width: int) -> Path:
    shutil.copytree(CONF, project / "conf")
    mlp = project / "conf" / "model" / "mlp.yaml"
    mlp.write_text(mlp.read_text() + f"width: {width}\n")  # this project's own default
    return project / "conf"


def test_the_conf_of_the_folder_the_user_stands_in_wins(tmp_path, monkeypatch):
    project = tmp_path / "project"
    conf = copy_conf(project, width=5)
    (project / "notebooks").mkdir()
    assert find_conf_dir(project) == conf.resolve()
    assert find_conf_dir(project / "notebooks") == conf.resolve()  # a parent's conf/, as git finds its root
    monkeypatch.chdir(project / "notebooks")
    assert compose_model(["model=mlp"]).model[0].out_features == 5  # not the checkout's width 8
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fallback = PACKAGED_CONF_DIR if (PACKAGED_CONF_DIR / "config.yaml").is_file() else CONF_DIR
    assert find_conf_dir(elsewhere) == fallback  # no project here: the installed one


@pytest.mark.slow
def test_a_non_editable_install_runs_from_the_project_folder(tmp_path):
    """About 20 s: a venv (system site-packages: the installed torch, hydra, ...), pip install ., three commands."""
    project, venv = tmp_path / "project", tmp_path / "venv"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip = subprocess.run([python, "-m", "pip", "install", "-q", str(project)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr

    def run(args, cwd):
        result = subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    where = run(["-c", "import experiments; print(experiments.__file__)"], tmp_path)
    assert where.startswith(str(venv)), where  # the installed copy, not an editable checkout
    plugin = run(["-c", "import hydra_plugins.experiments_launcher as m; print(m.__file__)"], tmp_path)
    assert plugin.startswith(str(venv)), plugin  # the Slurm launcher (hydra/launcher=cluster) is installed too
    run(["train.py", "trainer.epochs=1", "telemetry=off"], project)
    assert len(list((project / "outputs").glob("*/*-mlp-default/weights_final.pt"))) == 1
    assert "state_dict: 8 entries, 193 numbers" in run(["scripts/inspect_params.py", "model=tied"], project)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run(["-c", "from experiments import compose_model; from experiments.config import find_conf_dir; "
                     "print(find_conf_dir()); model = compose_model(['model=tied']).model; print(model[2] is model[4])"],
              elsewhere)
    assert out.split() == [str(venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" /
                               "site-packages" / "experiments" / "conf"), "True"]
