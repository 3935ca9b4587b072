"""Memory: what a run will need, estimated before it is allocated, against what the machine has.

A size in the config (``model.width=1e8``, ``data.vocab=1e8``, ``data.context=1e8``, ``model.depth=1e8``)
is refused before anything that large is allocated or looped over, with one paragraph naming the keys,
what they would need and what the machine has::

    check_fits(need, "data=zipf_text's text", "data.n_train=…", advice)   # ConfigError if need > available
    footprint = measure_on_meta(build, batch)   # a model built on the meta device: no memory used
    with out_of_memory(): ...                   # an allocation that still fails: one paragraph, not a traceback

Every estimate is a lower bound (what the tensors alone take, not the allocator's or Python's overhead), so a
refusal is certain: a run that is let through may still run out, and :func:`out_of_memory` reports that.
"""

from __future__ import annotations

import os
import resource
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import nn

from .errors import ConfigError, OutOfMemory

MODULE_BYTES = 2000  # the least one torch.nn.Module object takes (measured: ReLU 2.2 KB, Linear 3.6 KB)
UNLIMITED = 1 << 60  # a cgroup limit this large means no limit


def size(n: float) -> str:
    """Bytes in words: ``1.5 GiB``."""
    for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> Optional[int]:
    """What this process's cgroup memory limit leaves (v2 ``memory.max``, v1 ``memory.limit_in_bytes``), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    root = Path("/sys/fs/cgroup")
    for line in lines:
        _, controllers, where = line.split(":", 2)
        where = where.lstrip("/")
        if controllers == "":  # v2
            base, limit_name, usage_name = root, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # v1
            base, limit_name, usage_name = root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        for folder in (base / where, base):  # the process's own group, or the one mounted at the root
            limit, usage = _read_int(folder / limit_name), _read_int(folder / usage_name)
            if limit is not None and limit < UNLIMITED:
                return max(0, limit - (usage or 0))
    return None


def available(device: torch.device = torch.device("cpu")) -> Tuple[int, str]:
    """Bytes that can still be allocated on ``device``, and where the number comes from (for messages)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"free on {device} (of {size(total)})"
    have, source = None, ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                have, source = int(line.split()[1]) * 1024, "available (MemAvailable, /proc/meminfo)"
    except OSError:
        pass
    if have is None:  # not Linux
        have, source = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free"
    room = _cgroup_room()
    if room is not None and room < have:
        have, source = room, "left under this process's cgroup memory limit"
    return have, source


def check_fits(need: float, what: str, keys: str, advice: str, device: torch.device = torch.device("cpu"),
               detail: str = "") -> None:
    """A :class:`ConfigError` when ``need`` bytes exceed what ``device`` has: "``keys``: ``what`` needs at least
    …``detail``, and this machine has …. ``advice``"."""
    have, source = available(device)
    if need > have:
        raise ConfigError(f"{keys}: {what} would take at least {size(need)}{detail}, and this machine has {size(have)} "
                          f"{source}. {advice}")


def count_modules(specs) -> int:
    """How many module objects a layer spec (``model.layers``, plain containers; see ``models.py``) makes,
    without making them: a ``repeat`` multiplies its body (a named one adds a Sequential per copy)."""
    total = 0
    for spec in specs if isinstance(specs, list) else [specs]:
        if isinstance(spec, dict) and "repeat" in spec:
            n = spec["repeat"] if isinstance(spec["repeat"], int) else 1
            total += max(n, 0) * (count_modules(spec.get("body", [])) + ("name" in spec))
        elif isinstance(spec, dict) and "sequential" in spec:
            total += 1 + count_modules(spec["sequential"])
        elif isinstance(spec, str):  # a shared layer's name: made once, mentioned again for free
            total += 0
        else:
            total += 1
    return total


@dataclass
class Footprint:
    """A model's memory, measured on the meta device (``measure_on_meta``), in bytes."""

    parameters: int  # unique parameters (a tied one once)
    trainable: int  # of which trained (gradients)
    numbers: int  # unique parameter count
    largest: List[Tuple[str, Tuple[int, ...]]]  # the largest parameters, by size
    batch_rows: int  # rows of the batch the activations were measured on
    activations: int  # every module's output for that batch (what autograd keeps for the backward pass)
    widest: int  # the largest single module output for that batch
    shapes: List[Tuple[int, ...]] = field(default_factory=list)  # the largest outputs' shapes

    def training(self, optimizer_slots: int, eval_rows: int) -> Tuple[int, int, int]:
        """Bytes to train: the parameters, their gradients and ``optimizer_slots`` copies (SGD momentum: 1,
        Adam: 2) plus the larger of the next two; a training batch's activations; an evaluation chunk of
        ``eval_rows`` examples' widest output (its input and output at once)."""
        kept = self.parameters + self.trainable * (1 + optimizer_slots)
        evaluation = 2 * self.widest * eval_rows // max(self.batch_rows, 1)
        return kept + max(self.activations, evaluation), self.activations, evaluation


def measure_on_meta(build: Callable[[torch.Tensor], nn.Module], batch: torch.Tensor) -> Optional[Footprint]:
    """Build the model with ``build(meta_batch)`` (which also runs its first forward pass) on the meta device,
    where tensors have shapes and no memory, and measure it. The random number generator is left as it was.
    None when the model cannot be built there (a module that reads values): nothing is known then."""
    outputs: List[Tuple[int, Tuple[int, ...]]] = []

    def hook(module, inputs, output):
        if not module._modules and isinstance(output, torch.Tensor):
            outputs.append((output.numel() * output.element_size(), tuple(output.shape)))

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = build(batch.to("meta"))
    except Exception:  # noqa: BLE001 - the real build raises what it raises, with its own message
        return None
    finally:
        handle.remove()
    params = list(model.parameters())
    named = sorted(((n, p) for n, p in model.named_parameters()), key=lambda item: -item[1].numel())
    nbytes = lambda p: p.numel() * p.element_size()  # noqa: E731
    outputs.sort(key=lambda item: -item[0])
    return Footprint(parameters=sum(nbytes(p) for p in params),
                     trainable=sum(nbytes(p) for p in params if p.requires_grad),
                     numbers=sum(p.numel() for p in params), largest=[(n, tuple(p.shape)) for n, p in named[:3]],
                     batch_rows=len(batch), activations=sum(b for b, _ in outputs),
                     widest=outputs[0][0] if outputs else 0, shapes=[s for _, s in outputs[:3]])


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text
                                                or "Cannot allocate memory" in text)


@contextmanager
def out_of_memory(device: Optional[torch.device] = None) -> Iterator[None]:
    """An allocation that fails (``MemoryError``, the CPU allocator's "can't allocate memory", CUDA's out of
    memory) becomes :class:`OutOfMemory`: one paragraph with torch's own words, what is free now and what to do."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - only out-of-memory errors are turned, the rest re-raised
        if not _is_out_of_memory(error):
            raise
        detail = " ".join(str(error).split()) or type(error).__name__
        detail = detail[:300] + ("…" if len(detail) > 300 else "")
        if device is None and isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())  # CUDA's out of memory
        have, source = available(device or torch.device("cpu"))
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]  # ulimit -v: the process may not use what is free
        limited = "" if limit == resource.RLIM_INFINITY else f"; this process may map at most {size(limit)} (ulimit -v)"
        raise OutOfMemory(f"ran out of memory ({detail}). The run needs more memory than this machine gives it "
                          f"({size(have)} {source} now{limited}). Use smaller sizes (model.width, model.hidden, "
                          f"model.depth, data.batch_size, data.vocab, data.context, data.n_train), or a machine with "
                          f"more memory; a run that has a checkpoint continues with trainer.resume=auto.") from None
