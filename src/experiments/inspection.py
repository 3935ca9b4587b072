"""Look at a model's parameters: the seed's "parameter access" for any configured model or finished run.

Notebook use::

    from experiments import compose_model, load_run, parameter_table
    exp = compose_model(["model=tied", "init=xavier"])      # built, materialized, initialized
    rows = parameter_table(exp.model, exp.init_rules)        # one dict per unique parameter
    run = load_run("outputs/2026-11-22/10-30-00.412345-tied-xavier")   # a finished run's model, ties verified
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from .checkpoints import load_weights
from .config import compose_config
from .errors import ConfigError
from .experiment import Experiment, build_experiment
from .runs import saved_config, weights_path
from .summary import parameter_rows, totals
from .targets import only_safe_targets


def compose_model(overrides: Sequence[str] = (), device: str = "cpu", conf_dir: Optional[Path] = None) -> Experiment:
    """The model a run with these overrides starts from: same names, same initial values
    (composed from ``conf_dir``, by default the ``conf/`` of the project the user stands in)."""
    from hydra.errors import HydraException

    try:
        cfg = compose_config([*overrides, f"trainer.device={device}"], conf_dir)
    except (HydraException, OmegaConfBaseException) as e:  # a typo in an override: Hydra's message names it
        cause = f" {e.__cause__}" if isinstance(e.__cause__, OmegaConfBaseException) else ""
        raise ConfigError(" ".join(f"{e}{cause}".split())) from None
    return build_experiment(cfg)


@dataclass
class LoadedRun:
    experiment: Experiment
    cfg: DictConfig
    weights: Path

    @property
    def model(self) -> nn.Module:
        return self.experiment.model


def load_run(run_dir: Path, weights: str = "final", allow_targets: Sequence[str] = ()) -> LoadedRun:
    """A finished (or interrupted) run's model, built from its saved config, with its weights loaded.

    The folder is data: its config may name only ``torch.nn`` modules and init functions and this
    project's own layers, init functions and data loaders, plus the dotted paths (or globs) in
    ``allow_targets``; anything else is refused before it runs (see ``targets.py``)."""
    cfg = saved_config(run_dir)
    path = weights_path(run_dir, weights)
    try:
        cfg.trainer.device = "cpu"
        with only_safe_targets(allow_targets):
            exp = build_experiment(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"run={run_dir}: its .hydra/config.yaml is not a config this project can build "
                          f"({' '.join(str(e).split())}).") from None
    load_weights(exp.model, path)
    return LoadedRun(exp, cfg, path)


def parameter_table(model: nn.Module, init_rules: Optional[Mapping[str, str]] = None,
                    reference: Optional[Mapping[str, torch.Tensor]] = None) -> List[Dict[str, Any]]:
    """One dict per unique parameter: name, aliases, shape, count, uses, requires_grad, init,
    mean, std, min, max, norm; with ``reference`` (e.g. the initial state_dict) also how far
    each moved: ``moved`` = ||w - w_ref|| and ``moved_rel`` = moved / ||w_ref||."""
    params = dict(model.named_parameters())
    rows = []
    for row in parameter_rows(model, init_rules):
        w = params[row.name].detach().double()
        stats = {"mean": w.mean().item(), "std": w.std().item() if w.numel() > 1 else 0.0,
                 "min": w.min().item(), "max": w.max().item(), "norm": w.norm().item()}
        entry = {**row.as_dict(), **stats}
        if reference is not None:
            ref = reference[row.name].double()
            moved = (w - ref).norm().item()
            entry.update(moved=moved, moved_rel=moved / ref.norm().item() if ref.norm() > 0 else float("inf"))
        rows.append(entry)
    return rows


def module_names(model: nn.Module) -> List[str]:
    return [name for name, _ in model.named_modules() if name]


def layer(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"layer={name!r}: no such layer. Layers: {', '.join(module_names(model))}.") from None


def parameter(model: nn.Module, name: str) -> nn.Parameter:
    found = dict(model.named_parameters(remove_duplicate=False))
    if name not in found:
        raise ConfigError(f"param={name!r}: no such parameter. Parameters: {', '.join(found)}.")
    return found[name]


def report(exp: Experiment, layer_name: Optional[str] = None, param_name: Optional[str] = None,
           reference: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, Any]:
    """Everything the inspect command shows, as plain data."""
    model = exp.model
    out: Dict[str, Any] = {
        "tree": str(model),
        "parameters": parameter_table(model, exp.init_rules, reference),
        "totals": totals(model),
        "ties": exp.manifest,
    }
    if layer_name is not None:
        out["layer"] = {"name": layer_name, "state_dict": {k: v.tolist() for k, v in layer(model, layer_name).state_dict().items()},
                        "repr": repr(layer(model, layer_name).state_dict())}
    if param_name is not None:
        p = parameter(model, param_name)
        out["param"] = {"name": param_name, "shape": list(p.shape), "values": p.detach().tolist(),
                        "grad": None if p.grad is None else p.grad.tolist(), "repr": repr(p.detach())}
    return out


def _state_dict_note(t: Mapping[str, int], tied: bool) -> str:
    """Why the ``state_dict`` count differs from the unique count, when it does."""
    if t["state_dict_numbers"] == t["unique_numbers"] and t["state_dict_entries"] == t["unique_tensors"]:
        return ""
    return " (more than the unique count: a tied parameter is listed under each of its names)" if tied \
        else " (buffers included, e.g. BatchNorm running statistics)"


def render_text(data: Mapping[str, Any]) -> str:
    """The inspect command's terminal output."""
    lines = ["== module tree (print(model)) ==", data["tree"], "", "== parameters (one row per unique parameter) =="]
    rows = data["parameters"]
    cols = ["name", "aliases", "shape", "count", "requires_grad", "mean", "std", "min", "max", "norm", "init"]
    if rows and "moved" in rows[0]:
        cols += ["moved", "moved_rel"]
    cell = lambda v: ", ".join(v) if isinstance(v, list) and v and isinstance(v[0], str) else (  # noqa: E731
        f"{v:.4g}" if isinstance(v, float) else str(tuple(v) if isinstance(v, list) else v))
    table = [cols] + [[cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    t = data["totals"]
    lines += ["", "== totals ==",
              f"unique parameters: {t['unique_tensors']} tensors, {t['unique_numbers']} numbers "
              f"({t['trainable_numbers']} trainable)",
              f"state_dict: {t['state_dict_entries']} entries, {t['state_dict_numbers']} numbers"
              + _state_dict_note(t, bool(data["ties"])),
              "", "== tie groups =="]
    lines += [f"{name}: {', '.join(aliases)}" for name, aliases in data["ties"].items()] or ["none"]
    if "layer" in data:
        lines += ["", f"== {data['layer']['name']}: state_dict() ==", data["layer"]["repr"]]
    if "param" in data:
        p = data["param"]
        lines += ["", f"== {p['name']} {tuple(p['shape'])} ==", p["repr"],
                  "grad: None (no backward pass has run)" if p["grad"] is None else f"grad: {p['grad']}"]
    return "\n".join(lines)


def render_json(data: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in data.items()}, indent=2, default=str)
