"""Run folders on disk: their layout, their names, and reading a run or a sweep back.

A run folder holds Hydra's ``.hydra/`` (config, overrides), the TensorBoard event files,
``weights_init.pt`` and ``weights_final.pt``, ``checkpoints/`` and, if it failed,
``failure.txt``. A sweep folder holds one run folder per job, named by the job's overrides.
The report, its figures and inspection read runs through this module; nothing here imports
torch (curves are read with TensorBoard's own reader).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from . import use_roles
from .errors import CheckpointError, ConfigError
from .telemetry import tags

FAILURE_FILE = "failure.txt"
WEIGHTS_INIT, WEIGHTS_FINAL = "weights_init.pt", "weights_final.pt"
CHECKPOINT_DIR, LAST = "checkpoints", "last.pt"
EVENTS = "events.out.tfevents."
MAX_NAME = 200  # bytes of a job folder's name; file systems allow 255

Curve = List[Tuple[int, float, float]]  # (step, wall time, value)
FAILED_AT = re.compile(r"\b(?:at|by) step (\d+)\b")  # the step a failure message names


def job_dirname(override_dirname: str) -> str:
    """One folder name for a job's ``hydra.job.override_dirname`` (the ``${job_dirname:...}`` resolver).

    A ``/`` in a value (a path) becomes ``%2F`` instead of nesting folders, no overrides gives
    ``defaults``, and a name too long for the file system is shortened with a hash of the whole.
    """
    name = str(override_dirname).replace("%", "%25").replace("/", "%2F")
    if not name:
        return "defaults"
    if len(name.encode()) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name.encode()[: MAX_NAME - 12].decode(errors="ignore") + "-" + digest
    return name


def register_resolvers() -> None:
    """``${job_dirname:${hydra.job.override_dirname}}`` in ``hydra.sweep.subdir``."""
    OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)


def tensorboard_command(run_dir: Path) -> str:
    """The command that shows this run in TensorBoard under a readable name.

    ``tensorboard --logdir <run>`` would list the run as ``.``; its parent folder lists it by its
    folder name (``10-30-00.412345-tied-xavier``, or a sweep job's ``init=xavier,model=tied``),
    next to its neighbours (that day's runs, the sweep's other jobs).
    """
    run_dir = Path(run_dir).resolve()
    parent = run_dir.parent
    try:
        shown = parent.relative_to(Path.cwd().resolve()) or Path(".")
    except ValueError:
        shown = parent
    return f"tensorboard --logdir {shown}  (this run: {run_dir.name})"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def saved_config(run_dir: Path) -> DictConfig:
    """The config a run was started with (``.hydra/config.yaml``)."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"run={run_dir}: not a run folder (no .hydra/config.yaml).")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # YAML syntax, bad encoding: the file is damaged
        raise ConfigError(f"run={run_dir}: {path} cannot be read ({type(e).__name__}: {' '.join(str(e).split())}).") \
            from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"run={run_dir}: {path} does not hold a config (a mapping of keys).")
    return cfg


def weights_path(run_dir: Path, weights: str = "final") -> Path:
    """``final``/``init``: the run's weights files; any other name: ``checkpoints/<name>.pt``; or a path."""
    run_dir = Path(run_dir)
    candidates = {"final": run_dir / WEIGHTS_FINAL, "init": run_dir / WEIGHTS_INIT}
    path = candidates.get(weights) or checkpoint_dir(run_dir) / f"{weights.removesuffix('.pt')}.pt"
    if not path.is_file() and Path(weights).is_file():
        path = Path(weights)
    if not path.is_file():
        have = sorted(p.name for p in [*candidates.values(), *checkpoint_dir(run_dir).glob("*.pt")] if p.is_file())
        hint = (f"It has: {', '.join(have)}; choose one with weights=<init|final|checkpoint name>." if have
                else "It has no weights at all (the run failed before writing any; see its failure.txt).")
        shown = path.relative_to(run_dir) if path.is_relative_to(run_dir) else path
        raise CheckpointError(f"{run_dir}: no {shown}. {hint}")
    return path


@dataclass
class Job:
    """One run folder and what its event files say."""

    path: Path
    name: str  # relative to the folder being read
    overrides: List[str] = field(default_factory=list)
    choices: Dict[str, str] = field(default_factory=dict)
    status: str = "incomplete"  # ok | failed | incomplete (neither finished nor failed: killed, or running)
    reason: str = ""
    curves: Dict[str, Curve] = field(default_factory=dict)
    started: float = math.nan  # wall time of the first event (the writer's creation)
    roles: Dict[str, Dict[str, str]] = field(default_factory=dict)  # the run's use_roles text: param -> use -> role

    def last(self, tag: str) -> float:
        curve = self.curves.get(tag)
        return curve[-1][2] if curve else math.nan

    @property
    def steps(self) -> int:
        """The last step logged; for a failed run, the step its failure names (``diverged at step 5``,
        ``stopped by SIGTERM at step 40``) when that is later: signals are logged only every few steps."""
        logged = max((c[-1][0] for c in self.curves.values() if c), default=0)
        named = FAILED_AT.search(self.reason) if self.status == "failed" else None
        return max(logged, int(named.group(1))) if named else logged

    @property
    def wall_time(self) -> float:
        times = [t for c in self.curves.values() for _, t, _ in c]
        return max(times) - min(times + [self.started]) if times else math.nan

    def tied(self) -> List[str]:
        """Tied parameters with logged telemetry, sorted."""
        return sorted({t.name for t in map(tags.parse, self.curves) if t and t.kind == "tied"})

    def uses(self, name: str) -> List[str]:
        return sorted({t.use for t in map(tags.parse, self.curves) if t and t.kind == "tied" and t.name == name and t.use})

    def use_roles(self, name: str) -> Dict[str, str]:
        """The uses of tied parameter ``name`` that were logged -> their roles (``input``/``output``,
        ``t-k``, ``depth k``), in display order: as the run wrote them, else from the names alone."""
        logged = self.uses(name)
        written = self.roles.get(name, {})
        if written and set(logged) <= set(written):
            return {use: role for use, role in written.items() if use in logged}
        return use_roles.roles(logged)


def is_run(folder: Path) -> bool:
    names = os.listdir(folder)
    return any(n.startswith(EVENTS) for n in names) or FAILURE_FILE in names or os.path.isdir(folder / ".hydra")


def find_runs(root: Path) -> List[Path]:
    """``root`` itself if it is a run, else every run folder below it (hidden folders skipped)."""
    runs = []
    for here, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if is_run(Path(here)):
            runs.append(Path(here))
            dirs[:] = []  # a run's sub-folders (checkpoints, ...) are part of it
    return runs


def read_curves(folder: Path) -> Tuple[Dict[str, Curve], float, Dict[str, Dict[str, str]]]:
    """Every scalar curve of a run, read with TensorBoard's EventAccumulator, when it started, and the
    roles of its tied parameters' uses (its ``use_roles`` text; empty without one)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sizes = {"scalars": 0, "histograms": 1, "tensors": 1, "images": 1, "audio": 1, "compressedHistograms": 1}
    acc = EventAccumulator(str(folder), size_guidance=sizes)
    acc.Reload()
    curves = {tag: [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    try:
        started = acc.FirstEventTimestamp()
    except ValueError:  # no events at all
        started = math.nan
    roles = {}
    if f"{tags.USE_ROLES}/text_summary" in acc.Tags()["tensors"]:
        (text,) = acc.Tensors(f"{tags.USE_ROLES}/text_summary")[-1].tensor_proto.string_val
        roles = use_roles.parse_roles_markdown(text.decode("utf-8"))
    return curves, started, roles


def _masked_crc32c(data: bytes) -> Optional[int]:
    """The record format's checksum, in C (None without google-crc32c: only lengths are checked)."""
    try:
        import google_crc32c
    except ImportError:
        return None
    x = google_crc32c.value(bytes(data))
    return (((x >> 15) | ((x << 17) & 0xFFFFFFFF)) + 0xA282EAD8) & 0xFFFFFFFF


def event_file_problem(path: Path) -> Optional[str]:
    """Why an event file cannot be read to its end, or None. TensorBoard's reader stops silently at
    the first damaged record (a live file may end in a partial one), so the curves would just end."""
    data = Path(path).read_bytes()
    position = 0
    while position < len(data):
        header, checksum = data[position:position + 8], data[position + 8:position + 12]
        if len(checksum) < 4:
            return f"it ends in the middle of a record (byte {position} of {len(data)})"
        expected = _masked_crc32c(header)
        if expected is not None and struct.unpack("<I", checksum)[0] != expected:
            return f"the record at byte {position} of {len(data)} is damaged (its checksum does not match)"
        end = position + 12 + struct.unpack("<Q", header)[0] + 4
        if end > len(data):
            return f"it ends in the middle of a record (byte {position} of {len(data)})"
        expected = _masked_crc32c(data[position + 12:end - 4])
        if expected is not None and struct.unpack("<I", data[end - 4:end])[0] != expected:
            return f"the record at byte {position} of {len(data)} is damaged (its checksum does not match)"
        position = end
    return None


def status_of(folder: Path) -> Tuple[str, str]:
    failure, final = folder / FAILURE_FILE, folder / WEIGHTS_FINAL
    if failure.exists() and (not final.exists() or failure.stat().st_mtime >= final.stat().st_mtime):
        return "failed", " ".join(failure.read_text().split())
    return ("ok", "") if final.exists() else ("incomplete", "")


def load_job(folder: Path, root: Path) -> Job:
    name = str(folder.relative_to(root)) if folder != root else folder.name
    job = Job(path=folder, name=name)
    hydra_dir = folder / ".hydra"
    if (hydra_dir / "overrides.yaml").exists():
        job.overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    if (hydra_dir / "hydra.yaml").exists():
        choices = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.choices
        job.choices = {str(k): str(v) for k, v in choices.items() if not str(k).startswith("hydra")}
    job.status, job.reason = status_of(folder)
    events = sorted(p for p in folder.iterdir() if p.name.startswith(EVENTS))
    if events:
        job.curves, job.started, job.roles = read_curves(folder)
    for path in events:
        problem = event_file_problem(path)
        if problem and (job.status == "ok" or "damaged" in problem):  # a killed run may end in a partial record
            job.status = "failed"
            job.reason = f"its event file {path.name} cannot be read to the end: {problem}; the curves stop there. " \
                         + job.reason
    return job


def expected_jobs(sweep_dir: Path) -> Optional[List[str]]:
    """The job folders a sweep of Hydra's basic sweeper was to make, from its ``multirun.yaml`` (None
    when that cannot be known: no such file, another sweeper, job folders named otherwise)."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra = OmegaConf.load(path).hydra
    subdir = OmegaConf.to_container(hydra.sweep, resolve=False).get("subdir")
    if not str(hydra.sweeper.get("_target_", "")).endswith("BasicSweeper") or \
            subdir != "${job_dirname:${hydra.job.override_dirname}}":
        return None
    naming = hydra.job.config.override_dirname
    parser = OverridesParser.create()
    # what BasicSweeper sweeps: its ``params`` (e.g. from an experiment preset), then the command line's
    arguments = [f"{k}={v}" for k, v in (hydra.sweeper.get("params") or {}).items()] + list(hydra.overrides.task)
    try:
        grid = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)[0]
    except Exception:  # a sweep syntax that needs the config to expand (glob): not predicted
        return None
    names = []
    for job in grid:
        lines = sorted(o.input_line for o in parser.parse_overrides(job) if o.key_or_group not in naming.exclude_keys)
        names.append(job_dirname(naming.item_sep.join(lines).replace("=", naming.kv_sep)))
    return names


def load_jobs(root: Path) -> List[Job]:
    """The runs under ``root``, best validation loss first (failed and unfinished ones last)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: give a sweep folder or a run folder")
    jobs = [load_job(folder, root) for folder in find_runs(root)]
    if not jobs:
        raise FileNotFoundError(f"no runs under {root}: a run folder has event files or a .hydra folder")
    return sorted(jobs, key=_rank)


def _rank(job: Job):
    val = job.last(tags.LOSS_VAL)
    return (job.status != "ok", math.isnan(val), val if not math.isnan(val) else 0.0, job.name)


def varying_overrides(jobs: List[Job]) -> Tuple[List[List[str]], List[str]]:
    """Each job's overrides without those every job shares, and the shared ones."""
    if len(jobs) < 2:
        return [j.overrides for j in jobs], []
    common = set(jobs[0].overrides).intersection(*(j.overrides for j in jobs[1:]))
    shared = [o for o in jobs[0].overrides if o in common]
    return [[o for o in j.overrides if o not in common] for j in jobs], shared


def _value_key(value: str):
    """Sort key of an override's value: null first, then numbers as numbers, then words."""
    if value in ("null", "None", ""):
        return (0, 0.0, "")
    try:
        return (1, float(value), "")
    except ValueError:
        return (2, 0.0, value)


def by_swept_value(jobs: List[Job]) -> List[Job]:
    """The jobs in the order of what the sweep varies (``init.gain=0.5`` before ``1.0`` before ``2.0``),
    the first varying key first, numbers as numbers, ``null`` before any number: the order in which
    a sweep's figures and headline read as a series. (The report's table ranks by loss instead.)"""
    overrides, _ = varying_overrides(jobs)
    keys: List[str] = []
    for job_overrides in overrides:
        keys += [k for k in (o.partition("=")[0] for o in job_overrides) if k not in keys]

    def key(pair):
        job, job_overrides = pair
        values = dict(o.partition("=")[::2] for o in job_overrides)
        return [_value_key(values.get(k, "")) for k in keys] + [(3, 0.0, job.name)]

    return [job for job, _ in sorted(zip(jobs, overrides), key=key)]
