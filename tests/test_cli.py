"""End to end: the real Hydra CLI in a subprocess, its event files read with TensorBoard's reader."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from conftest import read_events, run_cli
from experiments.data import load_data

TIED_PARAMS = ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]


@pytest.fixture(scope="module")
def tied_run(tmp_path_factory):
    """``python train.py init=xavier model=tied`` in a fresh folder, into the default run folder."""
    cwd = tmp_path_factory.mktemp("tied")
    result = run_cli(["init=xavier", "model=tied"], cwd=cwd)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (cwd / "outputs").glob("*/*")
    return run_dir, result


def test_a_run_is_named_by_its_model_and_init_in_tensorboard(tied_run):
    """outputs/<date>/<time>-<model>-<init>, and the printed tensorboard command lists the run under
    that name (TensorBoard's own run discovery), not as '.', as one run (its uses are tags of it); the
    second printed command draws each use in its own colour, labelled by depth."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    run_dir, result = tied_run
    assert re.fullmatch(r"\d{2}-\d{2}-\d{2}\.\d{6}-tied-xavier", run_dir.name), run_dir.name
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_dir.parent.name)
    printed = re.search(r"see it with: tensorboard --logdir (\S+)  \(this run: (\S+)\); each use in its own "
                        r"colour: python (scripts/uses_view.py) (\S+)", result.stdout + result.stderr)
    assert printed and printed.group(1) == f"outputs/{run_dir.parent.name}", result.stdout[-500:]
    logdir = run_dir.parents[2] / printed.group(1)  # relative to the folder the user ran in
    runs = EventMultiplexer().AddRunsFromDirectory(str(logdir)).Runs()
    assert printed.group(2) == run_dir.name
    assert sorted(runs) == [run_dir.name]  # one TensorBoard run per run: a day's runs stay under 40
    view = run_dir.parents[2] / "view"
    shown = run_cli([printed.group(4), "--out", str(view)], cwd=run_dir.parents[2], script=printed.group(3))
    assert shown.returncode == 0, shown.stderr
    assert sorted(EventMultiplexer().AddRunsFromDirectory(str(view)).Runs()) == ["depth 1", "depth 2", "sum"]
    acc = read_events(run_dir)
    for depth, site in (("1", "2"), ("2", "4")):  # the shared layer at positions 2 and 4: depths 1 and 2
        drawn = read_events(view / f"depth {depth}").Scalars(f"2.weight grad_norm/{run_dir.name}")
        logged = acc.Scalars(f"tied/2.weight/use/{site}.weight/grad_norm")
        assert [(e.step, e.value) for e in drawn] == [(e.step, e.value) for e in logged]


def test_tied_xavier_writes_every_tag(tied_run):
    run_dir, result = tied_run
    acc = read_events(run_dir)
    scalars = set(acc.Tags()["scalars"])
    expected = {"loss/train", "loss/val", "tied/2.weight/grad_norm", "tied/2.bias/grad_norm"}
    expected |= {f"{kind}/{name}" for kind in ("param_norm", "grad_norm") for name in TIED_PARAMS}
    assert expected <= scalars
    assert not any(tag.startswith(("param_norm/4.", "grad_norm/4.")) for tag in scalars)  # a tied parameter once
    hists = set(acc.Tags()["histograms"])
    assert {f"{kind}/{name}" for kind in ("param", "grad") for name in TIED_PARAMS} <= hists
    assert {"config/text_summary", "ties/text_summary"} <= set(acc.Tags()["tensors"])
    ties = acc.Tensors("ties/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "2.weight, 4.weight" in ties
    hparams = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert b"loss/val" in hparams["_hparams_/experiment"]
    assert b"xavier" in hparams["_hparams_/session_start_info"]
    losses = [e.value for e in acc.Scalars("loss/train")]
    steps = [e.step for e in acc.Scalars("loss/train")]
    assert steps == [1] + list(range(4, 321, 4))  # the first step, then every 4: about 100 points over 320 steps
    assert losses[-1] < 0.5 * losses[1]
    assert [e.step for e in acc.Scalars("loss/val")] == [32 * k for k in range(1, 11)]
    # one progress line per epoch (with the epoch mean, loss/train_epoch), and the weights kept on disk
    output = result.stdout + result.stderr
    assert sum(" - epoch " in line and "loss/train_epoch" in line for line in output.splitlines()) == 10
    assert [e.step for e in acc.Scalars("loss/train_epoch")] == [32 * k for k in range(1, 11)]
    # one loss/train: the console's final value is the last point of the curve
    printed = float(output.split("done: loss/train ")[1].split()[0])
    assert printed == pytest.approx(acc.Scalars("loss/train")[-1].value, abs=5e-7)
    # final is final: every signal logs the last step, histograms the first and the last
    final = torch.load(run_dir / "weights_final.pt", weights_only=True)["state_dict"]
    for name in TIED_PARAMS:
        last = acc.Scalars(f"param_norm/{name}")[-1]
        assert last.step == 320 and last.value == pytest.approx(final[name].norm().item(), rel=1e-6)
    steps = [e.step for e in acc.Histograms("param/2.weight")]
    assert steps[0] == 1 and steps[-1] == 320 and 5 <= len(steps) <= 7
    for name in ("weights_init.pt", "weights_final.pt"):
        saved = torch.load(run_dir / name, weights_only=True)
        assert saved["tie_manifest"]["2.weight"] == ["2.weight", "4.weight"]


def test_tied_grad_norm_equals_an_independent_replay(tmp_path):
    """Full-batch SGD replayed by the test on an *untied* copy: the shared layer's logged
    gradient norm must equal the norm of the two copies' gradients summed, and each use's
    logged gradient norm, cosine and the cancellation must equal those of the copies, at
    every step; likewise the activation statistics of each use and the update ratios."""
    run_dir, steps, lr = tmp_path / "run", 4, 0.03
    every1 = [f"telemetry.{s}.every=1" for s in ("loss", "param_norm", "grad_norm", "tied", "activations",
                                                   "update_ratio")]
    result = run_cli(["init=xavier", "model=tied", "data.batch_size=1000", f"trainer.epochs={steps}",
                      f"optim.lr={lr}", *every1, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    data = load_data(cfg.data, cfg.trainer.seed)  # full batch: the shuffle order does not matter

    state = torch.load(run_dir / "weights_init.pt", weights_only=True)["state_dict"]
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                        nn.Linear(8, 1)).double()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(state[name])  # 4.* from the state_dict alias: same values, separate tensor

    acc = read_events(run_dir)
    logged = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    x, y = data.train_x.double(), data.train_y.double()
    for step in range(1, steps + 1):
        net.zero_grad()
        outputs, h = [], x
        for layer in net:
            h = layer(h)
            outputs.append(h.detach())
        loss = F.mse_loss(h, y)
        loss.backward()
        summed = {leaf: getattr(net[2], leaf).grad + getattr(net[4], leaf).grad for leaf in ("weight", "bias")}
        for leaf in ("weight", "bias"):
            uses = [getattr(net[i], leaf).grad.flatten() for i in (2, 4)]
            total = summed[leaf].flatten()
            for i, g in zip((2, 4), uses):
                use = f"tied/2.{leaf}/use/{i}.{leaf}"
                assert logged[f"{use}/grad_norm"][step] == pytest.approx(g.norm().item(), rel=1e-4)
                cos = (g @ total / (g.norm() * total.norm())).item()
                assert logged[f"{use}/cos"][step] == pytest.approx(cos, rel=1e-4, abs=1e-5)
            cancellation = (total.norm() / (uses[0].norm() + uses[1].norm())).item()
            assert logged[f"tied/2.{leaf}/cancellation"][step] == pytest.approx(cancellation, rel=1e-4)
        for i, out in enumerate(outputs):  # positions 2 and 4: the shared layer's two uses
            assert logged[f"act/{i}/mean"][step] == pytest.approx(out.mean().item(), rel=1e-4, abs=1e-6)
            assert logged[f"act/{i}/std"][step] == pytest.approx(out.std().item(), rel=1e-4)
            if i in (1, 3, 5):
                dead = (out == 0).all(dim=0).double().mean().item()
                assert logged[f"act/{i}/dead_frac"][step] == pytest.approx(dead)
        ratio = (lr * summed["weight"]).norm() / net[2].weight.norm()
        assert logged["update_ratio/2.weight"][step] == pytest.approx(ratio.item(), rel=1e-3)
        assert logged["loss/train"][step] == pytest.approx(loss.item(), rel=1e-4)
        assert logged["tied/2.weight/grad_norm"][step] == pytest.approx(summed["weight"].norm().item(), rel=1e-4)
        assert logged["tied/2.bias/grad_norm"][step] == pytest.approx(summed["bias"].norm().item(), rel=1e-4)
        assert logged["grad_norm/0.weight"][step] == pytest.approx(net[0].weight.grad.norm().item(), rel=1e-4)
        with torch.no_grad():  # SGD, with the shared layer moved by the summed gradient in both copies
            for i in (0, 6):
                for p in net[i].parameters():
                    p -= lr * p.grad
            for leaf in ("weight", "bias"):
                for i in (2, 4):
                    getattr(net[i], leaf).sub_(lr * summed[leaf])
    final = torch.load(run_dir / "weights_final.pt", weights_only=True)["state_dict"]
    for name, p in net.named_parameters():
        torch.testing.assert_close(final[name].double(), p, rtol=1e-4, atol=1e-5)


def test_unknown_key_fails_fast_and_names_it(tmp_path):
    result = run_cli(["model.widht=3", f"hydra.run.dir={tmp_path / 'r'}"])
    assert result.returncode != 0
    assert "widht" in result.stderr


def test_all_signals_write_every_tag(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["model=tied", "telemetry=all", "trainer.epochs=2", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr
    acc = read_events(run_dir)
    scalars = set(acc.Tags()["scalars"])
    expected = {"tied/2.weight/cancellation", "tied/2.bias/cancellation"}
    expected |= {f"tied/2.{leaf}/use/{i}.{leaf}/{kind}" for leaf in ("weight", "bias") for i in (2, 4)
                 for kind in ("grad_norm", "cos")}
    expected |= {f"update_ratio/{name}" for name in TIED_PARAMS}
    expected |= {f"act/{layer}/{stat}" for layer in range(7) for stat in ("mean", "std")}
    expected |= {f"act/{layer}/dead_frac" for layer in (1, 3, 5)}  # the ReLUs; 2 and 4 are the shared layer's uses
    assert expected <= scalars, expected - scalars
    assert [e.step for e in acc.Scalars("tied/2.weight/use/4.weight/cos")] == list(range(1, 65))
    for e in acc.Scalars("tied/2.weight/cancellation"):
        assert 0.0 <= e.value <= 1.0 + 1e-6
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    # each use is a tag of this run (TensorBoard colours by run: the per-use view draws them in colour)
    (uses,) = [regexes for title, regexes in charts.items() if title.startswith("2.weight: gradient norm of each use")]
    assert [t for t in scalars if any(re.search(r, t) for r in uses)] == \
        [t for t in scalars if re.fullmatch(r"tied/2\.weight/use/[24]\.weight/grad_norm", t)] != []
    assert not any(p.is_dir() for p in run_dir.iterdir() if p.name not in (".hydra", "checkpoints"))  # no sub-runs
    labels = acc.Tensors("uses/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| 2.weight | 2.weight | depth 1 |" in labels and "| 2.bias | 4.bias | depth 2 |" in labels
    summary = acc.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| 2.weight | 2.weight, 4.weight | (8, 8) | 64 | 2 |" in summary and "**121**" in summary


def test_help_lists_the_users_groups_and_the_launchers_not_the_schemas():
    """``python train.py model=tied --help``: every group of conf/ with exactly its options (the chosen one
    starred), the launchers and sweepers with example commands, the config that command would run;
    none of the internal schema/* groups."""
    result = run_cli(["model=tied", "--help"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "schema" not in out
    conf = Path(__file__).resolve().parents[1] / "conf"
    groups = [p for p in sorted(conf.iterdir()) if p.is_dir() and p.name != "hydra"]
    assert {"model", "init", "data", "hparams_search"} <= {g.name for g in groups}
    chosen = {"model": "tied", "init": "default", "data": "synthetic", "optim": "sgd", "trainer": "default",
              "telemetry": "default"}
    for group in groups:
        options = sorted(f.stem for f in group.glob("*.yaml"))
        listed = re.search(rf"^  {group.name}: (.*)$", out, re.MULTILINE)
        assert listed, f"group {group.name} missing from --help"
        assert listed.group(1) == ", ".join(o + "*" * (o == chosen.get(group.name)) for o in options)
    launchers = re.search(r"^  hydra/launcher: (.*)$", out, re.MULTILINE).group(1).replace("*", "").split(", ")
    assert {"basic", "joblib", "submitit_local", "cluster"} <= set(launchers)
    assert "optuna" in re.search(r"^  hydra/sweeper: (.*)$", out, re.MULTILINE).group(1)
    assert "python train.py -m hparams_search=optuna" in out and "python train.py -m hydra/launcher=joblib" in out
    assert "python train.py -m experiment=bptt" in out  # the presets (conf/experiment/) are sweeps
    assert re.search(r"^model:\n  name: tied$", out, re.MULTILINE)  # the composed config of this command
