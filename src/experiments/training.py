"""The training loop: from a composed config to a trained, logged run.

    train(cfg, run_dir)          # what train.py calls; returns the final validation loss

is three steps of a :class:`Run`: set up (fresh, or resumed from a checkpoint), train epoch by
epoch, finish (final weights, the value a sweeper minimises).

Under torchrun, or as a Slurm job of several tasks, the run is one model trained by every process
(``distributed.py``): ``DistributedDataParallel`` averages the gradients, each rank trains on its
rows of the global batch (``data.batch_size``), rank 0 writes the run folder, and the ranks agree on
what they log (the monitor reduces it on logged steps), on a divergence and on a signal to stop.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import ddp, distributed
from .checkpoints import (find_checkpoint, load_training_state, restore_training_state, run_dir_of, save_checkpoint,
                          save_weights)
from .config import check_optimizer, check_trainer
from .ddp import StopFlags
from .distributed import Reducer
from .errors import ConfigError, Diverged, Interrupted
from .experiment import build_experiment
from .guards import DivergenceGuard, InterruptGuard, check_validation, spread_nonfinite
from .memory import out_of_memory
from .objective import CLASSES, evaluate, loss_function, make_optimizer
from .outputs import predictions
from .progress import Progress
from .resume import Change, check_changes, config_changes, describe, restore_hydra_config, set_hyperparameters
from .run_folder import RunLock, discard_events, refuse_previous_run, remove_temporaries, storage_errors
from .runs import FAILURE_FILE, LAST, WEIGHTS_FINAL, WEIGHTS_INIT, checkpoint_dir, tensorboard_command
from .slurm import resume_if_requeued
from .summary import summary_markdown
from .telemetry import tags
from .telemetry.monitor import cadences
from .telemetry.summaries import hparam_values, swept_keys, ties_markdown
from .lens import Lens
from .uses import discover_uses

log = logging.getLogger(__name__)


class Run:
    """One run: the experiment, its optimizer and monitor, and where training stands
    (``step`` done, ``epoch`` in progress, ``skip`` batches of it done)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, choices: Optional[Mapping[str, str]] = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        check_trainer(cfg.trainer)  # every config check happens before the data is loaded and the model built
        check_optimizer(cfg.optim)
        cadences(cfg.telemetry)
        self.group = distributed.current()  # several processes train this run (train() started the group)
        self.rank, self.world = (self.group.rank, self.group.world) if self.group else (0, 1)
        self.writes = self.rank == 0  # rank 0 writes the run folder
        if self.group:
            distributed.check_batch(cfg.data.batch_size, self.world)
        self.exp = build_experiment(cfg)  # (it checks the data, model and init sections; nothing is written yet)
        self.model, self.data = self.exp.model, self.exp.data
        named = list(self.model.named_parameters())
        self.names, self.params = [n for n, _ in named], [p for _, p in named]
        self.optimizer = make_optimizer(cfg.optim, self.params)
        self.guard = DivergenceGuard(self.optimizer, self.names, self.params, agreed=self.group is not None)
        self.forward, self.reducer, self.flags = self.model, None, None  # one process: the model itself
        if self.group:
            ddp.check_model(self.model, self.world)
            self.reducer, self.flags = Reducer(self.world), StopFlags(self.world, self.exp.device)
            self.forward = ddp.wrap(self.model, self.exp.device, self.flags)
        self.check_every = cfg.trainer.check_every
        self.loss_fn = loss_function(self.data.task)
        self.clip = cfg.trainer.clip_grad_norm
        if cfg.model.grad_scale:  # a scaled use that the model does not have: refused before anything is written
            discover_uses(self.model, self.data.sample_batch(), cfg.model.grad_scale)
        self.compiled = self.compile(cfg)
        self.autocast = cfg.trainer.precision == "bf16"
        self.shuffle = torch.Generator().manual_seed(cfg.trainer.seed + 1)
        self.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        self.step, self.epoch, self.skip, self.val_loss = 0, 1, 0, float("nan")
        self.train_loss = float("nan")  # the last loss/train point: the mean since the point before
        self.epoch_loss_start = None  # the running loss total when the epoch in progress began

        self.checkpointed: Optional[int] = None  # the step of the last checkpoint, once there is one

        checkpoint = find_checkpoint(cfg.trainer.resume, self.run_dir) if cfg.trainer.resume else None
        state, changes = {}, []
        if checkpoint:
            self.run_dir = run_dir_of(checkpoint)
            state = load_training_state(checkpoint)
            changes = self.check_resume(state, checkpoint, hydra_dir=Path(run_dir))
        self.lock = RunLock.acquire(self.run_dir) if self.writes else None  # one process (rank 0) per run folder
        try:
            self.start(checkpoint, state, changes, choices or {})
        except BaseException:
            self.release()
            raise
        where = f" in {self.world} processes ({self.group.backend}, {self.data.batch_size // self.world} rows of " \
                f"each batch of {self.data.batch_size} per process)" if self.group else ""
        log.info("training %s (%d parameters, %d tied by name; sharing by use is found at the first logged step) on %s%s: %d epochs of %d steps; run folder %s",
                 cfg.model.name, sum(p.numel() for p in self.params), len(self.exp.manifest), self.exp.device, where,
                 cfg.trainer.epochs, self.data.steps_per_epoch(), self.run_dir)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def check_resume(self, state: Dict, checkpoint: Path, hydra_dir: Path) -> List[Change]:
        """What differs from the checkpoint's config; refused unless ``trainer.resume_changes=allow``."""
        if not state.get("config"):
            log.warning("%s records no config: cannot check that this command continues the same experiment",
                        checkpoint)
            return []
        changes = config_changes(state["config"], self.config_yaml)
        try:
            check_changes(changes, self.cfg.trainer.resume_changes, checkpoint)
        except ConfigError:
            if hydra_dir.resolve() == self.run_dir.resolve():  # Hydra just wrote this command's config there
                restore_hydra_config(self.run_dir, state["config"])
            raise
        return changes

    def start(self, checkpoint: Optional[Path], state: Dict, changes: List[Change], choices: Mapping[str, str]):
        """Into the locked run folder: the restored state (resumed) or ``weights_init.pt``, then the monitor."""
        cfg = self.cfg
        if not cfg.trainer.resume and self.writes:
            refuse_previous_run(self.run_dir)  # a run folder is one run
        if self.writes:
            remove_temporaries(self.run_dir)
        if checkpoint:
            new_optimizer = any(c.key == "optim._target_" for c in changes)
            restore_training_state(state, checkpoint, self.model, None if new_optimizer else self.optimizer,
                                   self.data.steps_per_epoch())
            set_hyperparameters(self.optimizer, cfg.optim)  # the config's lr & co., not the checkpoint's
            self.step, self.epoch, self.skip = state["step"], state["epoch"], state["batch_in_epoch"]
            self.shuffle.set_state(state["rng"]["shuffle"])
            self.checkpointed = self.step
            log.info("resuming from %s at step %d (epoch %d, %d batches done)", checkpoint, self.step, self.epoch,
                     self.skip)
            if changes:
                log.warning("resuming with settings that differ from the checkpoint's (trainer.resume_changes=allow):"
                            "\n%s", describe(changes))
        elif self.writes:
            if cfg.trainer.resume == "auto":
                discard_events(self.run_dir)  # an attempt killed before its first checkpoint: start over
            save_weights(self.model, self.run_dir / WEIGHTS_INIT)
        total_steps = cfg.trainer.epochs * self.data.steps_per_epoch()
        self.lens = Lens(self.model, self.run_dir, cfg.telemetry, grad_scale=cfg.model.grad_scale,
                         total_steps=total_steps, purge_step=self.step + 1 if checkpoint else None,
                         classification=self.data.task in CLASSES, first_step=self.step + 1,
                         reducer=self.reducer, rank=self.rank)
        self.monitor = self.lens.monitor
        if state.get("telemetry"):
            self.monitor.load_state_dict(state["telemetry"])
            if "epoch_loss_start" in state["telemetry"] and self.skip:  # resumed within an epoch
                self.epoch_loss_start = torch.tensor(state["telemetry"]["epoch_loss_start"], dtype=torch.float64,
                                                     device=self.monitor.loss_total.device)
        if checkpoint and changes:
            self.monitor.text("resume_changes", describe(changes), self.step)
        if not checkpoint:
            self.monitor.text("config", "    " + self.config_yaml.replace("\n", "\n    "))
            self.monitor.text("ties", ties_markdown(self.exp.manifest))
            self.monitor.text("summary", summary_markdown(self.model, self.exp.init_rules))
            self.monitor.hparams(self.hparams(cfg, choices), self.metric_tags(), self.run_dir.name)

    @staticmethod
    def hparams(cfg: DictConfig, choices: Mapping[str, str]) -> Dict[str, object]:
        """What the HParams tab shows for this run (see ``telemetry.summaries.hparam_values``)."""
        if not HydraConfig.initialized():  # called from code, not the command line
            return hparam_values(cfg, choices, [])
        hydra = HydraConfig.get()
        swept = swept_keys(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else None
        return hparam_values(cfg, choices, list(hydra.overrides.task), swept)

    def metric_tags(self):
        """The curves the HParams tab shows for this run."""
        metrics = [tags.LOSS_TRAIN, tags.LOSS_VAL]
        if self.data.task in CLASSES:
            metrics += [tags.ACC_TRAIN, tags.ACC_VAL]
        return metrics + ([tags.PPL_VAL] if self.data.task == "next_token" else [])

    def train_epoch(self, interrupt: InterruptGuard) -> Dict[str, float]:
        """The rest of the epoch in progress, its validation, its checkpoint; the epoch's metrics."""
        started, epoch_start = time.perf_counter(), self.shuffle.get_state()
        if self.epoch_loss_start is None:
            self.epoch_loss_start = self.monitor.loss_total.clone()
        steps, epochs = self.data.steps_per_epoch(), self.cfg.trainer.epochs
        progress = Progress(steps, self.skip, self.cfg.trainer.progress_every_s, f"{self.epoch}/{epochs}",
                            later=steps * (epochs - self.epoch))
        self.model.train()
        for x, y in self.data.batches(self.shuffle, self.skip):
            self.step, self.skip = self.step + 1, self.skip + 1
            self.train_step(x, y, interrupt.signum)
            if self.skip >= progress.due and self.writes:  # the only cost of progress lines on most steps
                progress.check(self.skip)
            signum, caught = self.flags.agreed() if self.flags else (interrupt.signum, 1)
            if signum:
                self.guard.check(self.step)
                path = self.checkpoint(epoch_start, numbered=False)
                by = f" (caught by {caught} of the {self.world} processes)" if self.group else ""
                raise Interrupted(f"stopped by {signal.Signals(signum).name}{by} at step {self.step}; checkpoint "
                                  f"written to {path}.", signum, self.run_dir)
        self.guard.check(self.step)
        self.monitor.sync()  # distributed: every rank's losses added up
        # the epoch's steps (a resumed epoch's mean counts those before the interruption too)
        epoch_loss = (self.monitor.loss_total - self.epoch_loss_start).item() / max(self.skip, 1)
        self.epoch_loss_start = None
        metrics = {tags.LOSS_TRAIN_EPOCH: epoch_loss, **evaluate(self.model.eval(), self.data)}
        self.val_loss = metrics[tags.LOSS_VAL]
        check_validation(self.step, metrics, self.names, self.params)
        self.monitor.epoch_end(self.step, metrics)
        log.info("epoch %d/%d  step %d  %s  (%.2fs)", self.epoch, self.cfg.trainer.epochs, self.step,
                 "  ".join(f"{k} {v:.6f}" for k, v in metrics.items()), time.perf_counter() - started)
        self.epoch, self.skip = self.epoch + 1, 0
        every = self.cfg.trainer.checkpoint_every
        self.checkpoint(self.shuffle.get_state(), numbered=every > 0 and (self.epoch - 1) % every == 0)
        return metrics

    def compile(self, cfg: DictConfig) -> Optional[nn.Module]:
        """``trainer.compile``: the compiled model, for the steps that log nothing (the lens sees no use
        inside a compiled graph, so the steps that log run the model eagerly: same values)."""
        if not cfg.trainer.compile:
            return None
        if cfg.model.grad_scale:
            raise ConfigError(f"trainer.compile=true with model.grad_scale={dict(cfg.model.grad_scale)}: the scale "
                              f"acts on every step, and inside a compiled graph no use of a parameter can be told "
                              f"apart. Drop one of the two (trainer.compile=false keeps the scale).")
        if self.group:
            raise ConfigError("trainer.compile=true in a distributed run (torchrun, Slurm tasks): not supported yet; "
                              "use trainer.compile=false.")
        return torch.compile(self.model)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, signum: Optional[int] = None) -> None:
        """One optimizer step, watched by the lens (which adds its loss up on the device). A step
        that logs nothing moves nothing to the host. Distributed: this rank's rows of the batch
        (``scale``: see ``distributed.shard``), and ``signum`` (a signal this rank has caught) goes to the
        other ranks with the gradients."""
        step, scale = self.step, None
        if self.group:
            x, y, scale = ddp.shard(x, y, self.rank, self.world)
            self.flags.post(signum)
        logs = self.lens.due(step)
        model = self.compiled if self.compiled is not None and not logs else self.forward
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = predictions(model(x), self.data.task)  # the logits the task scores (outputs.py)
            loss = self.loss_fn(out, y) if scale is None else self.loss_fn(out, y, reduction="sum") * scale
        self.optimizer.zero_grad(set_to_none=True)
        (spread_nonfinite(loss) if self.group else loss).backward()
        self.guard.after_backward(step, loss)
        if logs or step % self.check_every == 0:
            self.guard.check(step)  # before anything of a non-finite step is logged
        self.lens.step(step, loss.detach(), out, y, scale)
        if self.clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        if logs:
            written = self.lens.finish()
            if tags.LOSS_TRAIN in written:
                self.train_loss = written[tags.LOSS_TRAIN]

    def checkpoint(self, shuffle_state: torch.Tensor, numbered: bool) -> Path:
        """``checkpoints/last.pt`` (and a numbered copy) at the current step. ``shuffle_state`` is
        the shuffle generator's state at the start of the epoch in progress. Distributed: every rank
        calls it (the monitor gathers each rank's part), rank 0 writes, and the ranks go on (or stop)
        only once it is written, or all fail if it could not be."""
        telemetry = self.telemetry_state()
        path, error = checkpoint_dir(self.run_dir) / LAST, None
        if self.writes:
            self.monitor.flush()  # what was logged up to here is on disk before the checkpoint that resumes from it
            try:
                path = save_checkpoint(self.run_dir, self.model, self.optimizer, step=self.step, epoch=self.epoch,
                                       batch_in_epoch=self.skip, shuffle_state=shuffle_state,
                                       config_yaml=self.config_yaml, numbered=numbered, telemetry=telemetry,
                                       processes=self.world)
            except Exception as e:
                if not self.group:
                    raise
                error = e
        if self.group:
            distributed.agree_on_failure(error, self.rank, self.world, "writing the checkpoint")
        self.checkpointed = self.step
        return path

    def last_good_state(self) -> str:
        """For a divergence message: what is left to go back to."""
        if self.checkpointed is None:
            return "No checkpoint was written yet (it diverged before the end of its first epoch)."
        return (f"The last checkpoint, {checkpoint_dir(self.run_dir) / LAST} (step {self.checkpointed}), holds the "
                f"last good state.")

    def telemetry_state(self) -> Dict[str, object]:
        """The monitor's running state, and where the epoch in progress began (for its mean)."""
        state = self.monitor.state_dict()
        if self.skip and self.epoch_loss_start is not None:
            state["epoch_loss_start"] = float(self.epoch_loss_start)
        return state

    def finish(self) -> float:
        """Final weights; a finished run is no longer a failure. Returns the final validation loss."""
        if self.val_loss != self.val_loss:  # resumed a run that had already finished its epochs
            self.val_loss = evaluate(self.model.eval(), self.data)[tags.LOSS_VAL]
        if not self.writes:
            return self.val_loss
        save_weights(self.model, self.run_dir / WEIGHTS_FINAL)
        (self.run_dir / FAILURE_FILE).unlink(missing_ok=True)  # a resumed run that finishes is no longer a failure
        log.info("done: loss/train %.6f (the mean since the previous point)  loss/val %.6f; see it with: %s",
                 self.train_loss, self.val_loss, tensorboard_command(self.run_dir, tied=bool(self.lens.uses())))
        return self.val_loss


def train(cfg: DictConfig, run_dir: Path, choices: Optional[Mapping[str, str]] = None) -> float:
    """Build, initialize, train and log the experiment ``cfg`` into ``run_dir``.

    With ``trainer.resume`` it continues a run from its checkpoint instead (in that run's
    folder). Returns the final validation loss, the number a sweeper minimises.
    """
    resume_if_requeued(cfg)  # a Slurm job requeued at its time limit continues from its checkpoint
    group = distributed.start(cfg.trainer.distributed.backend, cfg.trainer.device, cfg.trainer.distributed.timeout_s)
    # a full disk or a read-only folder, an allocation that fails: one paragraph naming it
    with storage_errors(run_dir), out_of_memory():
        run = distributed.together(lambda: Run(cfg, run_dir, choices), group, undo=Run.release)
        try:
            with InterruptGuard() as interrupt:
                try:
                    while run.epoch <= cfg.trainer.epochs:
                        run.train_epoch(interrupt)
                except Diverged as error:
                    error.args = (f"{error} {run.last_good_state()}",)
                    raise
                except Exception as error:
                    peer = distributed.peer_failure(error, group, run.step)  # another rank is gone
                    if peer is not None:
                        raise peer from None
                    raise
                finally:
                    run.lens.close()
            value = run.finish()
        finally:
            run.release()
    distributed.stop()
    return value

