"""Whether a model fits its data and the machine, said before (or instead of) what torch would say.

- :func:`resolved_model`: the model spec with its interpolations resolved; one that reads a data key the
  data does not have (``model=rnn data=digits``: ``${data.context}``) names the key and the data that have it.
- :func:`check_model_memory`: the number of modules the spec makes, then the parameters, gradients,
  optimizer state and activations of the model built on the meta device, against the machine (``memory.py``).
- :func:`input_mismatch`: why the first forward pass failed (token ids into a model without an embedding,
  an embedding smaller than the vocabulary, features into an embedding).
- :func:`check_outputs`: the model's output has the shape the data's targets need.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, List, Optional

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError
from torch import nn

from .config import data_schemas
from .data import Dataset
from .errors import ConfigError
from .memory import MODULE_BYTES, Footprint, check_fits, count_modules, measure_on_meta, size
from .objective import CLASSES, EVAL_CHUNK

TOKEN_MODELS = "model=tied_lm or model=rnn"  # the configs that start with an Embedding


def _data_with(key: str) -> List[str]:
    """The data configs whose schema has ``key`` (``context``), or that are next-token data."""
    return sorted(name for name, schema in data_schemas().items()
                  if key in {f.name for f in dataclasses.fields(schema)})


def _next_token_data() -> List[str]:
    return sorted(name for name, schema in data_schemas().items() if schema.task == "next_token")


def resolved_model(cfg: DictConfig) -> Dict[str, Any]:
    """``cfg.model`` as plain containers. An interpolation of a data key the data lacks is a :class:`ConfigError`
    naming the model, the key, where it is read and the data configs that have it."""
    try:
        return OmegaConf.to_container(cfg.model, resolve=True)
    except InterpolationKeyError as e:
        found = re.search(r"Interpolation key '([^']+)'", str(e))
        missing = found.group(1) if found else str(e)
        where = f" (in {e.full_key})" if getattr(e, "full_key", None) else ""
        if missing.startswith("data."):
            having = ", ".join(f"data={n}" for n in _data_with(missing.partition(".")[2]))
            raise ConfigError(f"model={cfg.model.name} reads {missing}{where}, which data={cfg.data.name} does not "
                              f"have: model={cfg.model.name} needs data that has {missing} ({having or 'none do'}).") \
                from None
        raise ConfigError(f"model={cfg.model.name}: {missing}{where} is not set.") from None


def _repeats(node: Any, where: str) -> List[str]:
    """``model.layers[0].repeat=100000000 (model.depth)`` for every repeat of more than one copy."""
    found = []
    if isinstance(node, DictConfig):
        if "repeat" in node:
            raw, n = node._get_node("repeat")._value(), node.repeat
            source = f" (from {raw.strip('${}')})" if isinstance(raw, str) and raw.startswith("${") else ""
            if isinstance(n, int) and n > 1:
                found.append(f"{where}.repeat={n}{source}")
        for key in node:
            if key != "repeat":
                found += _repeats(node._get_node(key), f"{where}.{key}")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            found += _repeats(node._get_node(i), f"{where}[{i}]")
    return found


def _optimizer_slots(cfg: DictConfig) -> int:
    """Copies of the parameters the optimizer keeps: Adam's two moments, SGD's momentum buffer."""
    target = str(cfg.optim.get("_target_", ""))
    if target.rpartition(".")[2] in ("Adam", "AdamW", "NAdam", "RAdam", "Adamax"):
        return 2
    return 1 if cfg.optim.get("momentum", 0) else 0


def _size_keys(cfg: DictConfig, dims: set) -> List[str]:
    """``key=value`` of the model and data sizes (integers set in the config, not interpolated) among ``dims``."""
    keys = []
    for group in ("model", "data"):
        node = cfg[group]
        for key in node:
            child = node._get_node(key)
            if child._is_interpolation():
                continue
            value = node[key]
            if isinstance(value, int) and not isinstance(value, bool) and value > 1 and value in dims:
                keys.append(f"{group}.{key}={value}")
    return keys


def check_model_memory(cfg: DictConfig, data: Dataset, sample: torch.Tensor, device: torch.device,
                       build: Callable[[torch.Tensor], nn.Module]) -> Optional[Footprint]:
    """Refuse a model the machine cannot hold, before it is built: first the number of module objects its spec
    makes (``model.depth=1e8`` would loop for hours), then the model built on the meta device by ``build``."""
    spec = resolved_model(cfg)
    modules = count_modules(spec.get("layers", []))
    repeats = ", ".join(_repeats(cfg.model._get_node("layers"), "model.layers")) if "layers" in cfg.model else ""
    check_fits(modules * MODULE_BYTES, f"model={cfg.model.name}'s layers make {modules:,} module objects, which",
               repeats or f"model={cfg.model.name}", "Use fewer repeats (model.depth, model.blocks, model.uses).",
               detail=f" ({MODULE_BYTES} bytes each, before any parameter)")
    footprint = measure_on_meta(build, sample)
    if footprint is None:
        return None
    slots, rows = _optimizer_slots(cfg), len(sample)
    eval_rows = min(len(data.val_x), EVAL_CHUNK)
    need, training, evaluation = footprint.training(slots, eval_rows)
    on_device = sum(t.numel() * t.element_size() for t in (data.train_x, data.train_y, data.val_x, data.val_y))
    if device.type != "cpu":  # on the CPU the data is already loaded, so no longer available
        need += on_device
    dims = {max(shape, default=0) for _, shape in footprint.largest}
    rows_key = []
    if max(training, evaluation) > footprint.parameters:  # the activations: their widths, and how many rows
        dims |= set(footprint.shapes[0][1:] if footprint.shapes else ())
        rows_key = [f"data.batch_size={cfg.data.batch_size}" if training >= evaluation
                    else f"data.n_val={cfg.data.n_val}" if cfg.data.get("n_val") == eval_rows else ""]
    keys = ", ".join(filter(None, _size_keys(cfg, dims) + rows_key)) or f"model={cfg.model.name}"
    largest = ", ".join(f"{name} {shape}" for name, shape in footprint.largest)
    widest = f"; the widest {footprint.shapes[0]}" if footprint.shapes else ""
    optimizer = f", {slots}x that for the optimizer state" if slots else ""
    data_part = f", plus {size(on_device)} of data" if device.type != "cpu" else ""
    detail = (f" on {device}: {size(footprint.parameters)} of parameters ({footprint.numbers:,} numbers; the "
              f"largest {largest}), as much for their gradients{optimizer}, and the larger of {size(training)} of "
              f"activations for a training batch of {rows} (every layer's output{widest}) and {size(evaluation)} "
              f"for a validation pass over {eval_rows} examples{data_part}")
    check_fits(need, f"model={cfg.model.name} with these sizes", keys, "Use smaller sizes.", device, detail)
    if device.type != "cpu":  # it is built and initialized on the CPU, then moved
        check_fits(footprint.parameters, f"model={cfg.model.name}'s parameters, built on the CPU first,", keys,
                   "Use smaller sizes.")
    return footprint


def input_mismatch(cfg: DictConfig, model: nn.Module, data: Dataset, sample: torch.Tensor, error: Exception) -> str:
    """Why the first forward pass of ``model`` on ``sample`` raised ``error``, in the config's terms."""
    embeddings = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Embedding)]
    leaves = [m for m in model.modules() if not m._modules]
    base = (f"model={cfg.model.name} cannot take data={cfg.data.name}'s input (a batch of {tuple(sample.shape)} "
            f"{sample.dtype})")
    if sample.is_floating_point():
        if leaves and isinstance(leaves[0], nn.Embedding):
            return (f"{base}: model={cfg.model.name} starts with an Embedding, which reads token ids, and "
                    f"data={cfg.data.name} gives {sample.dtype} features. Token models take next-token data: "
                    f"{', '.join(f'data={n}' for n in _next_token_data())}.")
        return f"{base}: {error}."
    if not embeddings:
        return f"{base}: {error}. Token ids need a model that starts with an Embedding: {TOKEN_MODELS}."
    highest = int(max(data.train_x.max(), data.val_x.max()))
    small = [(name, m) for name, m in embeddings if m.num_embeddings <= highest]
    if small:
        name, m = small[0]
        rows = m.num_embeddings
        source = f" (model.out_features={rows})" if cfg.model.get("out_features") == rows else ""
        return (f"model={cfg.model.name} does not fit data={cfg.data.name}: its Embedding {name} has {rows} rows"
                f"{source}, but the data's token ids go up to {highest} (a vocabulary of {data.num_outputs}, "
                f"data.num_outputs). Leave model.out_features to the data (the model configs set it to "
                f"${{data.num_outputs}}).")
    return f"{base}: {error}."


def check_outputs(cfg: DictConfig, data: Dataset, output: Any, rows: int) -> None:
    """The first forward pass's ``output`` has the shape the loss needs: ``(rows, data.num_outputs)`` class
    scores, or the regression targets' shape (a wider output would be broadcast against them silently)."""
    if not isinstance(output, torch.Tensor):  # e.g. a model returning a structure: its loss is its own
        return
    if data.task in CLASSES:
        expected = (rows, data.num_outputs)
        what = "its classes" if data.task == "classification" else "its vocabulary"
    else:
        expected = (rows, *data.train_y.shape[1:])
        what = "its targets"
    got = tuple(output.shape)
    if got == expected:
        return
    width = got[-1] if len(got) > 1 else None
    source = (f" model.out_features={width} sets the last layer's width: leave it to the data (the model configs "
              f"set it to ${{data.num_outputs}})." if width is not None and cfg.model.get("out_features") == width
              and width != data.num_outputs else "")
    raise ConfigError(f"model={cfg.model.name} does not fit data={cfg.data.name}: for a batch of {rows} it outputs "
                      f"{got}, and the data needs {expected} ({data.num_outputs} per example, "
                      f"data.num_outputs: {what}).{source}")
