"""Run folders on disk: their layout, their names, and reading a run or a sweep back.

A run folder holds Hydra's ``.hydra/`` (config, overrides), the TensorBoard event files,
``weights_init.pt`` and ``weights_final.pt``, ``checkpoints/`` and, if it failed,
``failure.txt``. A sweep folder holds one run folder per job, named by the job's overrides.
The report, its figures, a sweep's summary and inspection read runs through this module, as data that
may be hostile: files through ``run_files`` (regular files only, bounded, no YAML alias bombs), event
files through ``event_records`` (bounded records); a job whose files cannot be read is a failed job
whose reason says which file and why, in one line. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from . import use_roles
from .errors import CheckpointError, ConfigError, UnreadableFile
from .event_records import EVENTS, Curve, read_run_events
from .run_files import load_yaml, open_regular, read_text
from .telemetry import tags

FAILURE_FILE = "failure.txt"
WEIGHTS_INIT, WEIGHTS_FINAL = "weights_init.pt", "weights_final.pt"
CHECKPOINT_DIR, LAST = "checkpoints", "last.pt"
MAX_NAME = 200  # bytes of a job folder's name; file systems allow 255

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


DATE_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}")  # outputs/<date>/..., outputs/multirun/<date>/<time>/...


def _shown(path: Path) -> Path:
    try:
        return path.relative_to(Path.cwd().resolve()) or Path(".")
    except ValueError:
        return path


def day_folder(run_dir: Path) -> Path:
    """The log directory of a run's day: a single run's parent (``outputs/<date>``), a sweep job's
    sweep folder's parent when that is a date (``outputs/multirun/<date>``: the day's sweeps), else
    the sweep folder (a ``hydra.sweep.dir`` of the user's). Each job is one TensorBoard run there
    (``telemetry.use_runs``), so a day of experiments stays under the 40 runs that TensorBoard's
    Scalars and Custom Scalars tabs select on first load."""
    run_dir = Path(run_dir).resolve()
    parent = run_dir.parent
    if (parent / "multirun.yaml").is_file() and DATE_FOLDER.fullmatch(parent.parent.name):
        return parent.parent
    return parent


def tensorboard_command(run_dir: Path, tied: bool = False) -> str:
    """The command that shows this run in TensorBoard under a readable name, next to that day's runs;
    with ``tied``, also the one that draws each use of its tied parameters in its own colour.

    ``tensorboard --logdir <run>`` would list the run as ``.``; the day's folder lists it by its
    path below it (``10-30-00.412345-tied-xavier``, or a sweep job's ``<time>/init=xavier,model=tied``).
    """
    run_dir = Path(run_dir).resolve()
    day = day_folder(run_dir)
    line = f"tensorboard --logdir {_shown(day)}  (this run: {run_dir.relative_to(day).as_posix()})"
    if tied:
        sweep = run_dir.parent if (run_dir.parent / "multirun.yaml").is_file() else run_dir
        line += f"; each use in its own colour: python scripts/uses_view.py {_shown(sweep)}"
    return line


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def saved_config(run_dir: Path) -> DictConfig:
    """The config a run was started with (``.hydra/config.yaml``)."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.exists():
        raise ConfigError(f"run={run_dir}: not a run folder (no .hydra/config.yaml).")
    try:
        cfg = load_yaml(path, run_dir)
    except UnreadableFile as e:
        raise ConfigError(f"run={run_dir}: {e}.") from None
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
    if path.exists() or path.is_symlink():  # the run folder's own file: a regular one, inside the folder
        try:
            open_regular(path, run_dir).close()
        except (UnreadableFile, FileNotFoundError) as e:
            raise CheckpointError(f"{e}.") from None
    elif Path(weights).is_file():  # a file the user names
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
            return dict(sorted(((use, role) for use, role in written.items() if use in logged),
                               key=lambda item: use_roles.display_key(item[1])))
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


MAX_FAILURE_BYTES = 64 * 2**10  # of failure.txt: one paragraph


def status_of(folder: Path, root: Optional[Path] = None) -> Tuple[str, str]:
    failure, final = folder / FAILURE_FILE, folder / WEIGHTS_FINAL
    if failure.exists() and (not final.exists() or failure.stat().st_mtime >= final.stat().st_mtime):
        try:
            return "failed", " ".join(read_text(failure, root or folder, MAX_FAILURE_BYTES, cut=True).split())
        except UnreadableFile as e:
            return "failed", f"its {FAILURE_FILE} is not read: {e.reason}."
    return ("ok", "") if final.exists() else ("incomplete", "")


def _read_settings(job: Job, root: Path) -> None:
    """The job's overrides and group choices from ``.hydra/`` (read as they are: nothing resolved)."""
    hydra_dir = job.path / ".hydra"
    if (hydra_dir / "overrides.yaml").exists():
        overrides = OmegaConf.to_container(load_yaml(hydra_dir / "overrides.yaml", root), resolve=False)
        job.overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
    if (hydra_dir / "hydra.yaml").exists():
        saved = OmegaConf.to_container(load_yaml(hydra_dir / "hydra.yaml", root), resolve=False)
        choices = saved.get("hydra", {}).get("runtime", {}).get("choices", {}) if isinstance(saved, dict) else {}
        job.choices = {str(k): str(v) for k, v in choices.items() if not str(k).startswith("hydra")}


def load_job(folder: Path, root: Path) -> Job:
    """The run in ``folder``. A file that cannot be read makes it a failed job, the reason naming the file."""
    name = str(folder.relative_to(root)) if folder != root else folder.name
    job = Job(path=folder, name=name)
    job.status, job.reason = status_of(folder, root)
    problems = []
    try:
        _read_settings(job, root)
    except UnreadableFile as e:
        shown = e.path.relative_to(folder) if e.path.is_relative_to(folder) else e.path
        problems.append(f"its {shown} is not read: {e.reason}")
    except Exception as e:  # YAML that is not a run's (syntax, types): the job's settings are unknown
        problems.append(f"its .hydra/ files cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
    events = read_run_events(folder, root)
    job.curves, job.started = events.curves, events.started
    job.roles = use_roles.parse_roles_markdown(events.texts.get(f"{tags.USE_ROLES}/text_summary", ""))
    for problem in events.problems:
        if problem.partial and job.status != "ok":  # a killed run may end in a partial record
            continue
        problems.append(problem.text + ("; the curves stop there" if "cannot be read to the end" in problem.text
                                        or problem.partial else ""))
    if problems:
        job.status = "failed"
        job.reason = " ".join(filter(None, [". ".join(problems) + ".", job.reason]))
    return job


MAX_EXPECTED_JOBS = 100_000  # a multirun.yaml that claims more jobs is not expanded


def expected_jobs(sweep_dir: Path) -> Optional[List[str]]:
    """The job folders a sweep of Hydra's basic sweeper was to make, from its ``multirun.yaml`` (None
    when that cannot be known: no such file, another sweeper, job folders named otherwise, a file that
    cannot be read or claims more than :data:`MAX_EXPECTED_JOBS` jobs)."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.exists():
        return None
    try:
        return _job_names(load_yaml(path, sweep_dir).hydra)
    except Exception:  # damaged, refused, or a sweep syntax that needs the config to expand (glob)
        return None


def _job_names(hydra: DictConfig) -> Optional[List[str]]:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, RangeSweep

    subdir = OmegaConf.to_container(hydra.sweep, resolve=False).get("subdir")
    if not str(hydra.sweeper.get("_target_", "")).endswith("BasicSweeper") or \
            subdir != "${job_dirname:${hydra.job.override_dirname}}":
        return None
    naming = hydra.job.config.override_dirname
    parser = OverridesParser.create()
    # what BasicSweeper sweeps: its ``params`` (e.g. from an experiment preset), then the command line's
    arguments = [f"{k}={v}" for k, v in (hydra.sweeper.get("params") or {}).items()] + list(hydra.overrides.task)
    overrides = parser.parse_overrides(arguments)
    count = 1
    for override in overrides:  # the grid's size before it is expanded
        value = override.value()
        if isinstance(value, RangeSweep):
            count *= max(0, math.ceil((value.stop - value.start) / value.step)) if value.step else 0
        elif isinstance(value, ChoiceSweep):
            count *= len(value.list)
    if count > MAX_EXPECTED_JOBS:
        return None
    grid = BasicSweeper.split_arguments(overrides, None)[0]
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
