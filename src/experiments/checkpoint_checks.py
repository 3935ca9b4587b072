"""What a checkpoint holds is checked before any of it is restored.

``torch.load(weights_only=True)`` keeps code out of a file, not nonsense: a step of -100, a
float16 copy of a float32 weight, two different tensors under the names of one tied parameter,
an RNG state of the wrong type all load. Each check here names the file and the entry
(``step``, ``state_dict['4.weight']``, ``optimizer.state[3]['momentum_buffer']``,
``rng['shuffle']``) and says what it should hold, as one :class:`CheckpointError` paragraph.

- :func:`check_layout`: what needs no model: the entries a training checkpoint has, their types
  and ranges (step, epoch, batch, RNG states, the config, the telemetry state, the tie manifest).
- :func:`check_weights`: a ``state_dict`` against the model: tensors of its dtypes and shapes,
  tied names holding one value (and, for a resume, finite values).
- :func:`check_training_state`: the rest against the run: the optimizer state against the
  optimizer's parameters and settings, the batch within the epoch against the epoch's length.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from .errors import CheckpointError
from .tying import tie_manifest

INT64_MAX = (1 << 63) - 1
ADVICE = ("The file was altered or damaged (this project writes none such): resume from an earlier checkpoint "
          "(checkpoints/step_*.pt), or start the run over.")


def _refuse(path: Path, entry: str, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {entry} {what}. {ADVICE}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, torch.Tensor) else f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return text if len(text) <= 80 else text[:77] + "..."


def _int_in(state: Mapping, key: str, low: int, high: int, path: Path) -> int:
    value = state[key]
    if not _is_int(value):
        raise _refuse(path, key, f"is {_shown(value)} ({type(value).__name__}); it should be a whole number")
    if not low <= value <= high:
        raise _refuse(path, key, f"is {value}; it should be {low} or more" + (f" and at most {high}" if high < INT64_MAX
                                                                              else ""))
    return value


def _rng_state(value: Any, entry: str, path: Path) -> None:
    """A CPU generator's state: a uint8 tensor a generator accepts (tried on a scratch generator)."""
    expected = torch.Generator().get_state()
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.shape != expected.shape:
        raise _refuse(path, entry, f"is {_shown(value)}; it should be a torch.uint8 tensor of shape "
                                   f"{tuple(expected.shape)} (a random generator's state)")
    try:
        torch.Generator().set_state(value)
    except RuntimeError as e:
        raise _refuse(path, entry, f"is not a random generator's state ({e})") from None


def _finite_number(value: Any, entry: str, path: Path) -> None:
    if not _is_number(value) or not math.isfinite(value):
        raise _refuse(path, entry, f"is {_shown(value)}; it should be a finite number")


def check_layout(state: Any, path: Path) -> None:
    """The entries of a training checkpoint, their types and ranges (nothing about the model)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a training checkpoint (it holds {type(state).__name__}, not a dict).")
    missing = {"state_dict", "optimizer", "rng", "step", "epoch", "batch_in_epoch"} - set(state)
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (missing {', '.join(sorted(missing))}).")
    step = _int_in(state, "step", 0, INT64_MAX, path)
    _int_in(state, "epoch", 1, INT64_MAX, path)
    _int_in(state, "batch_in_epoch", 0, step, path)
    if not isinstance(state["state_dict"], dict):
        raise _refuse(path, "state_dict", f"is {_shown(state['state_dict'])}; it should map parameter names to tensors")
    if state.get("config") is not None and not isinstance(state["config"], str):
        raise _refuse(path, "config", f"is {_shown(state['config'])}; it should be the run's config as YAML text")
    manifest = state.get("tie_manifest", {})
    if not isinstance(manifest, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v) for k, v in manifest.items()):
        raise _refuse(path, "tie_manifest", f"is {_shown(manifest)}; it should map a parameter name to its names")
    rng = state["rng"]
    if not isinstance(rng, dict) or not {"torch", "shuffle"} <= set(rng):
        raise _refuse(path, "rng", f"is {_shown(rng)}; it should hold the 'torch' and 'shuffle' generator states")
    _rng_state(rng["torch"], "rng['torch']", path)
    _rng_state(rng["shuffle"], "rng['shuffle']", path)
    cuda = rng.get("cuda", [])
    if not isinstance(cuda, list) or not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda):
        raise _refuse(path, "rng['cuda']", f"is {_shown(cuda)}; it should be a list of torch.uint8 tensors")
    _check_telemetry(state.get("telemetry") or {}, step, path)


def _check_telemetry(telemetry: Any, step: int, path: Path) -> None:
    """The monitor's running state: finite numbers (the loss so far), steps within the run."""
    if not isinstance(telemetry, dict):
        raise _refuse(path, "telemetry", f"is {_shown(telemetry)}; it should be the monitor's state (a dict)")
    for key in ("loss_total", "epoch_loss_start"):
        if key in telemetry:
            _finite_number(telemetry[key], f"telemetry['{key}']", path)
    signals = telemetry.get("signals", {})
    if not isinstance(signals, dict) or not all(isinstance(s, dict) for s in signals.values()):
        raise _refuse(path, "telemetry['signals']", f"is {_shown(signals)}; it should map signal names to states")
    for name, saved in signals.items():
        for key, value in saved.items():
            entry = f"telemetry['signals']['{name}']['{key}']"
            _finite_number(value, entry, path)
            if key.endswith("step") and not (_is_int(value) and 0 <= value <= step):
                raise _refuse(path, entry, f"is {_shown(value)}; it should be a step from 0 to the checkpoint's {step}")


def check_weights(saved: Mapping[str, Any], model: nn.Module, path: Path, entry: str = "state_dict",
                  finite: bool = False) -> None:
    """``saved`` fits ``model`` value for value: each entry a tensor of the model's dtype, the names of
    one tied parameter holding one value, and with ``finite`` no inf or nan. Another model's weights
    (other names or shapes) are left to ``load_state_dict``, which lists every difference."""
    expected = model.state_dict()
    if set(saved) != set(expected) or any(isinstance(v, torch.Tensor) and v.shape != expected[n].shape
                                          for n, v in saved.items()):
        return  # another model's weights: load_state_dict lists every difference ("does not fit this model")
    for name, value in saved.items():
        want = expected[name]
        where = f"{entry}['{name}']"
        if not isinstance(value, torch.Tensor):
            raise _refuse(path, where, f"is {_shown(value)}; it should be a {want.dtype} tensor of shape "
                                       f"{tuple(want.shape)}")
        if value.dtype != want.dtype:
            raise _refuse(path, where, f"is {value.dtype}, the model's is {want.dtype}: loading would convert it "
                                       f"and training would go on from other numbers than the run's")
        if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise _refuse(path, where, "holds inf or nan: a run never saves such weights")
    for canonical, aliases in tie_manifest(model).items():
        for alias in aliases[1:]:
            if canonical in saved and alias in saved and not torch.equal(saved[canonical], saved[alias]):
                raise CheckpointError(
                    f"{path}: {entry}['{canonical}'] and {entry}['{alias}'] hold different values, but in this model "
                    f"they are one tied parameter: loading would keep one of them and drop the other. {ADVICE}")


def _same_kind(saved: Any, current: Any) -> bool:
    """A saved optimizer setting can stand where the optimizer has ``current``."""
    if saved is None or current is None:
        return True
    if isinstance(current, bool) or isinstance(saved, bool):
        return isinstance(current, bool) and isinstance(saved, bool)
    if _is_number(current):
        return _is_number(saved) and math.isfinite(saved)
    if isinstance(current, (tuple, list)):
        return isinstance(saved, (tuple, list)) and len(saved) == len(current) and all(
            _same_kind(s, c) for s, c in zip(saved, current))
    return type(saved) is type(current)


def check_optimizer(saved: Any, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """The optimizer's saved state fits ``optimizer``: its groups' settings of the same kinds, each
    parameter's buffers of that parameter's shape and dtype (torch would convert them silently)."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) or \
            not isinstance(saved.get("param_groups"), list) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in saved["param_groups"]):
        raise _refuse(path, "optimizer", f"is {_shown(saved)}; it should be an optimizer's state_dict "
                                         f"('state' and 'param_groups')")
    groups = optimizer.param_groups
    if len(saved["param_groups"]) != len(groups) or any(
            len(s["params"]) != len(g["params"]) for s, g in zip(saved["param_groups"], groups)):
        return  # another optimizer layout: load_state_dict says so (a CheckpointError in restore_training_state)
    params: Dict[Any, torch.Tensor] = {}
    for i, (s, g) in enumerate(zip(saved["param_groups"], groups)):
        params.update(zip(s["params"], g["params"]))
        for key, value in s.items():
            if key != "params" and key in g and not _same_kind(value, g[key]):
                raise _refuse(path, f"optimizer.param_groups[{i}]['{key}']",
                              f"is {_shown(value)}; this optimizer's is {_shown(g[key])}")
    for index, buffers in saved["state"].items():
        param: Optional[torch.Tensor] = params.get(index)
        if param is None or not isinstance(buffers, dict):
            raise _refuse(path, f"optimizer.state[{index!r}]", "belongs to no parameter of the optimizer")
        for key, value in buffers.items():
            where = f"optimizer.state[{index}]['{key}']"
            if value is None or _is_number(value) and math.isfinite(value):
                continue
            if not isinstance(value, torch.Tensor):
                raise _refuse(path, where, f"is {_shown(value)}; it should be a tensor")
            if value.dim() == 0:  # a counter (Adam's step)
                if not bool(torch.isfinite(value)) or float(value) < 0:
                    raise _refuse(path, where, f"is {value.item()}; it should be a finite count, 0 or more")
                continue
            if value.shape != param.shape or value.dtype != param.dtype:
                raise _refuse(path, where, f"is {_shown(value)}; its parameter is a {param.dtype} tensor of shape "
                                           f"{tuple(param.shape)}")
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise _refuse(path, where, "holds inf or nan")


def check_training_state(state: Dict[str, Any], path: Path, model: nn.Module,
                         optimizer: Optional[torch.optim.Optimizer], steps_per_epoch: int) -> None:
    """Everything of a checked-layout checkpoint (:func:`check_layout`) against this run."""
    check_weights(state["state_dict"], model, path, finite=True)
    if optimizer is not None:
        check_optimizer(state["optimizer"], optimizer, path)
    if state["batch_in_epoch"] > steps_per_epoch:
        raise CheckpointError(f"{path}: batch_in_epoch is {state['batch_in_epoch']}, but an epoch of this run has "
                              f"{steps_per_epoch} batches: resuming would skip the rest of the epoch. If data.* "
                              f"settings were changed (trainer.resume_changes=allow), resume with the checkpoint's; "
                              f"otherwise the file was altered or damaged: resume from an earlier checkpoint "
                              f"(checkpoints/step_*.pt), or start the run over.")
