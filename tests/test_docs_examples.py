"""The documentation's examples (docs/examples/) run, and say what the pages say they do.

The pages include these files as they are (``--8<--``), so a page cannot show code that does not run:
the watch() loop trains and logs each use of its shared embedding; the models of your own get the use
names the "Your own model" page lists; the config folders compose from a searchpath."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from conftest import ROOT, read_events

EXAMPLES = ROOT / "docs" / "examples"


@pytest.fixture
def on_path(monkeypatch):
    """docs/examples on the path, as PYTHONPATH=docs/examples puts it; afterwards its modules are forgotten
    (another test's ``my_models`` must not find these)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", None) and str(EXAMPLES) in sys.modules[name].__file__:
            del sys.modules[name]


def example(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_watch_loop_trains_and_logs_each_use(tmp_path, capsys):
    loss, uses = example("watch_loop").main(str(tmp_path), steps=30)
    assert loss < 2.0  # from ~3.5 (ln 32): the loop trains
    assert list(uses) == ["wte.weight"] and list(uses["wte.weight"]) == ["wte.weight", "wte.weight@TinyGPT"]
    acc = read_events(tmp_path)
    for use in ("wte.weight", "wte.weight@TinyGPT"):
        assert [e.step for e in acc.Scalars(f"tied/wte.weight/use/{use}/grad_norm")] == [1, 10, 20, 30]
    assert [e.step for e in acc.Scalars("loss/train")] == [1, 10, 20, 30]
    assert "wte.weight@TinyGPT" in capsys.readouterr().out


@pytest.mark.parametrize("cls, expected", [
    ("TinyLM", {"embed.weight": ["embed.weight", "head.weight"]}),
    ("DepthLM", {"embed.weight": ["embed.weight", "embed.weight@DepthLM"],
                 "block.weight": ["block.weight", "block#1.weight", "block#2.weight"],
                 "block.bias": ["block.bias", "block#1.bias", "block#2.bias"]}),
])
def test_the_model_examples_build_and_their_uses_have_the_documented_names(tmp_path, on_path, cls, expected):
    from experiments import compose_model, watch

    exp = compose_model(["model=custom", f"model._target_=my_models.{cls}", "+model.vocab=${data.num_outputs}",
                         "data=zipf_text", "data.n_train=256", "data.n_val=64"])
    assert type(exp.model).__name__ == cls
    lens = watch(exp.model, log_dir=tmp_path, every=1)
    x, y = exp.data.train_x[:16], exp.data.train_y[:16]
    torch.nn.functional.cross_entropy(exp.model(x)[:, -1], y).backward()
    lens.step(1)
    found = {param: list(grads) for param, grads in lens.uses().items()}
    lens.close()
    assert found == expected


def test_the_config_folder_examples_compose(on_path):
    from experiments import compose_model

    tiny = compose_model([f"hydra.searchpath=[file://{EXAMPLES / 'my_conf'}]", "model=tiny", "data=zipf_text",
                          "data.n_train=256", "data.n_val=64"])
    assert type(tiny.model).__name__ == "TinyLM" and tiny.model.embed.weight.shape == (1000, 16)
    assert tiny.model.head.weight is tiny.model.embed.weight
    mine = compose_model([f"hydra.searchpath=[file://{EXAMPLES / 'my_conf'}]", "data=mine", "model=mlp"])
    assert mine.data.train_x.shape == (1000, 3) and mine.data.val_x.shape == (200, 3)
    assert torch.allclose(mine.data.train_y, torch.sin(mine.data.train_x).sum(1, keepdim=True))
