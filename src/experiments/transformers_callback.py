"""The per-use lens in a Hugging Face ``transformers.Trainer``: :class:`LensTrainerCallback`, a thin shell
over :class:`experiments.lens.Lens`.

::

    from transformers import Trainer
    from experiments.transformers_callback import LensTrainerCallback

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[LensTrainerCallback(every=10)])
    trainer.train()

It writes what :func:`experiments.watch` writes (the same tags, sub-runs and text summaries) for the
Trainer's model, into ``<output_dir>/lens`` unless ``log_dir`` says otherwise, the lens stepping once per
optimizer step: ``on_pre_optimizer_step`` calls ``lens.step(state.global_step + 1)`` and
``on_optimizer_step`` writes the values that need the update. With gradient accumulation the
micro-batches' uses add up under the same names; ``grad_scale`` acts on every step. A resumed
``train(resume_from_checkpoint=...)`` logs on from the checkpoint's step.

Gradient clipping. The Trainer clips (``max_grad_norm``, 1.0 by default) *before* it calls
``on_pre_optimizer_step``, which would leave the per-use gradients unclipped and ``.grad`` clipped. So the
callback clips in its place, with the same function and norm, after the lens has seen the gradients
(as our trainer logs them: before clipping): from ``on_step_begin`` to ``on_pre_optimizer_step`` of each
step ``args.max_grad_norm`` reads 0 (the Trainer then still computes and logs the same ``grad_norm``).
Training is unchanged.

The Trainer hands callbacks no loss: the lens logs no ``loss/train`` (the Trainer logs its own). What
it cannot do is an error when training starts, never wrong numbers: several processes (each would log
its own batch's per-use gradients), ``fp16`` (the loss scaler scales the per-use gradients, not
``.grad``: use ``bf16``), ``torch_compile`` (no use is seen inside a compiled graph), DeepSpeed and
FSDP (sharded parameters). Needs the ``transformers`` extra: ``pip install -e ".[transformers]"``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import torch

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover (the extra is installed where the tests run)
    raise ImportError('experiments.transformers_callback needs transformers: pip install -e ".[transformers]"') \
        from error

if not hasattr(TrainerCallback, "on_pre_optimizer_step"):  # pragma: no cover
    raise ImportError("experiments.transformers_callback needs a transformers whose Trainer calls "
                      "on_pre_optimizer_step (the 5.x series has it): pip install -U transformers")

from .errors import ConfigError
from .lens import Lens, telemetry_config

log = logging.getLogger(__name__)


class LensTrainerCallback(TrainerCallback):
    """Watch a ``transformers.Trainer``'s model with the per-use lens.

    ``log_dir``: where the event files go (default ``<output_dir>/lens``, next to the Trainer's own
    ``runs/``). ``every``, ``grad_scale``, ``signals``: as for :func:`experiments.watch`. After
    ``train()``, :attr:`lens` is the closed lens (``callback.lens.uses()``: the last logged step's uses).
    """

    def __init__(self, log_dir: Optional[Union[str, Path]] = None, every: Union[int, Mapping[str, int]] = 10,
                 grad_scale: Optional[Mapping[str, float]] = None, signals: Optional[Iterable[str]] = None):
        self.log_dir, self.grad_scale = log_dir, grad_scale
        self.telemetry = telemetry_config(every, signals)  # a bad signal or cadence fails here, not in train()
        self.lens: Optional[Lens] = None
        self.clip = 0.0  # the Trainer's max_grad_norm, which the callback applies in its place

    def on_train_begin(self, args, state, control, model: Optional[torch.nn.Module] = None, **kwargs):
        self._refuse(args)
        log_dir = Path(self.log_dir) if self.log_dir is not None else Path(args.output_dir) / "lens"
        done = state.global_step  # a resumed train() starts after its checkpoint's step
        self.lens = Lens(model, log_dir, self.telemetry, grad_scale=self.grad_scale,
                         total_steps=state.max_steps if state.max_steps > 0 else None,
                         first_step=done + 1, purge_step=done + 1 if done else None)
        self.clip = args.max_grad_norm or 0.0

    def _refuse(self, args) -> None:
        why = None
        if args.world_size > 1:
            why = (f"training runs in {args.world_size} processes, and each would log its own share of the batch's "
                   f"per-use gradients. Train in one process, or use our trainer (train.py under torchrun), which "
                   f"reduces them across processes")
        elif args.fp16:
            why = ("fp16=True scales the loss (a GradScaler): the per-use gradients would be scaled and .grad not. "
                   "Use bf16=True, or full precision")
        elif args.torch_compile:
            why = ("torch_compile=True: inside a compiled graph the lens sees no use of a parameter. Use "
                   "torch_compile=False while you watch")
        elif args.deepspeed or args.fsdp:
            why = "DeepSpeed and FSDP shard the parameters, and the lens watches whole ones. Train without them"
        if why:
            raise ConfigError(f"LensTrainerCallback: {why}.")

    def on_step_begin(self, args, state, control, **kwargs):
        if self.clip > 0:
            args.max_grad_norm = 0.0  # the Trainer must not clip before the lens has seen the gradients

    def on_pre_optimizer_step(self, args, state, control, model: Optional[torch.nn.Module] = None, **kwargs):
        args.max_grad_norm = self.clip
        step = state.global_step + 1
        if step != self.lens.next_step:
            raise ConfigError(f"LensTrainerCallback: the Trainer is at optimizer step {step} but the lens expected "
                              f"step {self.lens.next_step}: a step was skipped or repeated, and logged values would "
                              f"carry the wrong step numbers.")
        self.lens.step(step)
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip)  # what the Trainer would have done

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.lens.finish()  # after optimizer.step(): the parameter norms and update ratios

    def on_train_end(self, args, state, control, **kwargs):
        args.max_grad_norm = self.clip
        if self.lens is not None:
            self.lens.close()
