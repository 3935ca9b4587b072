"""The training loop: from a composed config to a trained, logged run.

    train(cfg, run_dir)          # what train.py calls; returns the final validation loss

is three steps of a :class:`Run`: set up (fresh, or resumed from a checkpoint), train epoch by
epoch, finish (final weights, the value a sweeper minimises).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .checkpoints import (find_checkpoint, load_training_state, restore_training_state, run_dir_of, save_checkpoint,
                          save_weights)
from .config import check_optimizer, check_trainer
from .errors import ConfigError, Diverged, Interrupted
from .experiment import build_experiment
from .guards import DivergenceGuard, InterruptGuard, check_validation
from .objective import CLASSES, evaluate, loss_function, make_optimizer
from .progress import Progress
from .resume import Change, check_changes, config_changes, describe, restore_hydra_config, set_hyperparameters
from .run_folder import RunLock, discard_events, refuse_previous_run, remove_temporaries, storage_errors
from .runs import FAILURE_FILE, LAST, WEIGHTS_FINAL, WEIGHTS_INIT, checkpoint_dir, tensorboard_command
from .slurm import resume_if_requeued
from .summary import summary_markdown
from .telemetry import tags
from .telemetry.monitor import Monitor, cadences
from .telemetry.summaries import hparam_values, swept_keys, ties_markdown
from .tying import tie_groups
from .uses import UseViews

log = logging.getLogger(__name__)


class Run:
    """One run: the experiment, its optimizer and monitor, and where training stands
    (``step`` done, ``epoch`` in progress, ``skip`` batches of it done)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, choices: Optional[Mapping[str, str]] = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        check_trainer(cfg.trainer)  # every config check happens before the data is loaded and the model built
        check_optimizer(cfg.optim)
        cadences(cfg.telemetry)
        self.exp = build_experiment(cfg)  # (it checks the data, model and init sections; nothing is written yet)
        self.model, self.data = self.exp.model, self.exp.data
        named = list(self.model.named_parameters())
        self.names, self.params = [n for n, _ in named], [p for _, p in named]
        self.optimizer = make_optimizer(cfg.optim, self.params)
        self.guard = DivergenceGuard(self.optimizer, self.names, self.params)
        self.check_every = cfg.trainer.check_every
        self.loss_fn = loss_function(self.data.task)
        self.clip = cfg.trainer.clip_grad_norm
        groups = tie_groups(self.model)  # the per-use views: model.grad_scale on every step, telemetry on some
        self.uses = UseViews(self.model, groups, cfg.model.grad_scale) if groups or cfg.model.grad_scale else None
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
        self.lock = RunLock.acquire(self.run_dir)  # one process per run folder
        try:
            self.start(checkpoint, state, changes, choices or {})
        except BaseException:
            self.lock.release()
            raise
        log.info("training %s (%d parameters, %d tied) on %s: %d epochs of %d steps; run folder %s",
                 cfg.model.name, sum(p.numel() for p in self.params), len(self.exp.manifest), self.exp.device,
                 cfg.trainer.epochs, self.data.steps_per_epoch(), self.run_dir)

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
        if not cfg.trainer.resume:
            refuse_previous_run(self.run_dir)  # a run folder is one run
        remove_temporaries(self.run_dir)
        if checkpoint:
            new_optimizer = any(c.key == "optim._target_" for c in changes)
            restore_training_state(state, checkpoint, self.model, None if new_optimizer else self.optimizer)
            set_hyperparameters(self.optimizer, cfg.optim)  # the config's lr & co., not the checkpoint's
            self.step, self.epoch, self.skip = state["step"], state["epoch"], state["batch_in_epoch"]
            self.shuffle.set_state(state["rng"]["shuffle"])
            self.checkpointed = self.step
            log.info("resuming from %s at step %d (epoch %d, %d batches done)", checkpoint, self.step, self.epoch,
                     self.skip)
            if changes:
                log.warning("resuming with settings that differ from the checkpoint's (trainer.resume_changes=allow):"
                            "\n%s", describe(changes))
        else:
            if cfg.trainer.resume == "auto":
                discard_events(self.run_dir)  # an attempt killed before its first checkpoint: start over
            save_weights(self.model, self.run_dir / WEIGHTS_INIT)
        total_steps = cfg.trainer.epochs * self.data.steps_per_epoch()
        self.monitor = Monitor(self.run_dir, self.model, cfg.telemetry, purge_step=self.step + 1 if checkpoint else None,
                               classification=self.data.task in CLASSES, uses=self.uses, total_steps=total_steps)
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
            self.train_step(x, y)
            if self.skip >= progress.due:  # the only cost of progress lines on most steps
                progress.check(self.skip)
            if interrupt.signum:
                self.guard.check(self.step)
                path = self.checkpoint(epoch_start, numbered=False)
                raise Interrupted(f"stopped by {interrupt.name} at step {self.step}; checkpoint written to {path}.",
                                  interrupt.signum, self.run_dir)
        self.guard.check(self.step)
        # the epoch's steps (a resumed epoch's mean counts those before the interruption too)
        epoch_loss = (self.monitor.loss_total - self.epoch_loss_start).item() / max(self.skip, 1)
        self.epoch_loss_start = None
        metrics = {tags.LOSS_TRAIN_EPOCH: epoch_loss, **evaluate(self.model.eval(), self.data)}
        self.val_loss = metrics[tags.LOSS_VAL]
        check_validation(self.step, self.val_loss, self.names, self.params)
        self.monitor.epoch_end(self.step, metrics)
        log.info("epoch %d/%d  step %d  %s  (%.2fs)", self.epoch, self.cfg.trainer.epochs, self.step,
                 "  ".join(f"{k} {v:.6f}" for k, v in metrics.items()), time.perf_counter() - started)
        self.epoch, self.skip = self.epoch + 1, 0
        every = self.cfg.trainer.checkpoint_every
        self.checkpoint(self.shuffle.get_state(), numbered=every > 0 and (self.epoch - 1) % every == 0)
        return metrics

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step, watched by the monitor (which adds its loss up on the device). A step
        that logs nothing moves nothing to the host and calls the monitor once."""
        step = self.step
        logs = bool(self.monitor.due(step))
        if logs:
            self.monitor.before_forward(step)
        out = self.model(x)
        loss = self.loss_fn(out, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.guard.after_backward(step, loss)
        if logs or step % self.check_every == 0:
            self.guard.check(step)  # before anything of a non-finite step is logged
        if logs:
            self.monitor.after_backward(step)
        if self.clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        if not logs:
            self.monitor.quiet_step(loss.detach(), out, y)
            return
        written = self.monitor.after_step(step, loss.detach(), out, y)
        if tags.LOSS_TRAIN in written:
            self.train_loss = written[tags.LOSS_TRAIN]

    def checkpoint(self, shuffle_state: torch.Tensor, numbered: bool) -> Path:
        """``checkpoints/last.pt`` (and a numbered copy) at the current step. ``shuffle_state`` is
        the shuffle generator's state at the start of the epoch in progress."""
        self.monitor.flush()  # what was logged up to here is on disk before the checkpoint that resumes from it
        path = save_checkpoint(self.run_dir, self.model, self.optimizer, step=self.step, epoch=self.epoch,
                               batch_in_epoch=self.skip, shuffle_state=shuffle_state,
                               config_yaml=self.config_yaml, numbered=numbered, telemetry=self.telemetry_state())
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
        save_weights(self.model, self.run_dir / WEIGHTS_FINAL)
        (self.run_dir / FAILURE_FILE).unlink(missing_ok=True)  # a resumed run that finishes is no longer a failure
        log.info("done: loss/train %.6f (the mean since the previous point)  loss/val %.6f; see it with: %s",
                 self.train_loss, self.val_loss, tensorboard_command(self.run_dir, tied="tied" in self.monitor.signals))
        return self.val_loss


def train(cfg: DictConfig, run_dir: Path, choices: Optional[Mapping[str, str]] = None) -> float:
    """Build, initialize, train and log the experiment ``cfg`` into ``run_dir``.

    With ``trainer.resume`` it continues a run from its checkpoint instead (in that run's
    folder). Returns the final validation loss, the number a sweeper minimises.
    """
    resume_if_requeued(cfg)  # a Slurm job requeued at its time limit continues from its checkpoint
    with storage_errors(run_dir):  # a full disk or a read-only folder: one paragraph naming it
        run = Run(cfg, run_dir, choices)
        try:
            with InterruptGuard() as interrupt:
                try:
                    while run.epoch <= cfg.trainer.epochs:
                        run.train_epoch(interrupt)
                except Diverged as error:
                    error.args = (f"{error} {run.last_good_state()}",)
                    raise
                finally:
                    run.monitor.close()
                    if run.uses:
                        run.uses.close()
            return run.finish()
        finally:
            run.lock.release()
