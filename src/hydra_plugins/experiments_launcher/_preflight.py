"""Before submitting: does the request fit any node of the partition? (``sinfo``)

A job that asks for more CPUs, memory or GPUs than any node has, more nodes than the partition
has, or more time than its limit, would be refused by ``sbatch`` or pend for ever (reason
``PartitionConfig``): :func:`request_problems` names the setting to lower and the largest value
the partition offers. Where ``sinfo`` does not answer, there is no cluster to submit to.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import List, Mapping, Optional

FORMAT = "%N|%c|%m|%G|%l|%t"  # node, CPUs, memory (MB), generic resources, partition time limit, state
UNUSABLE = {"down", "drain", "drained", "fail", "inval", "futr", "unk"}  # a node that runs no new job


@dataclass
class Node:
    name: str
    cpus: int
    memory_mb: int
    gpus: int
    time_limit_min: Optional[float]  # the partition's; None: unlimited
    state: str

    @property
    def usable(self) -> bool:
        return self.state.rstrip("*~#!%$@^-+") not in UNUSABLE


def parse_time_limit(text: str) -> Optional[float]:
    """Slurm's ``[days-]hours:minutes:seconds`` (or ``minutes:seconds``, ``minutes``) in minutes; None: unlimited."""
    text = text.strip()
    if text.lower() in {"infinite", "unlimited", "n/a", ""}:
        return None
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    if len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, (minutes, seconds) = 0.0, parts
    else:
        hours, minutes, seconds = 0.0, parts[0], 0.0
    return (float(days) if days else 0.0) * 1440 + hours * 60 + minutes + seconds / 60


def count_gpus(gres: str) -> int:
    """GPUs in a node's GRES: ``gpu:4``, ``gpu:a100:4(S:0-1)``, ``gpu:a100:2,gpu:v100:2``; ``(null)`` -> 0."""
    total = 0
    for item in re.split(r",(?![^(]*\))", gres):
        item = item.split("(")[0].strip()
        if item.startswith("gpu"):
            count = item.rsplit(":", 1)[-1]
            total += int(count) if count.isdigit() else 1
    return total


def parse_sinfo(text: str) -> List[Node]:
    """``sinfo -h -N -o FORMAT`` lines -> nodes."""
    nodes = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        name, cpus, memory, gres, limit, state = fields
        number = lambda s: int(re.match(r"\d*", s).group() or 0)  # noqa: E731  ("2+" when aggregated)
        nodes.append(Node(name, number(cpus), number(memory), count_gpus(gres), parse_time_limit(limit), state))
    return nodes


class SlurmUnreachable(RuntimeError):
    """sinfo does not answer: no Slurm cluster configured here, or its controller is down."""


def read_nodes(partition: str, timeout_s: float = 30) -> List[Node]:
    """The partition's nodes (none: no such partition)."""
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-p", partition, "-o", FORMAT], capture_output=True, text=True,
                             timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SlurmUnreachable(str(error)) from None
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines()
        raise SlurmUnreachable(lines[-1] if lines else f"sinfo exits with {out.returncode}")
    return parse_sinfo(out.stdout)


def partitions(timeout_s: float = 30) -> List[str]:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [p.rstrip("*") for p in out.stdout.split()]


def _int(value: object, default: int) -> int:
    return default if value is None else int(value)  # type: ignore[arg-type]


def request_problems(params: Mapping[str, object], nodes: List[Node]) -> List[str]:
    """What in the launcher settings ``params`` no node of ``nodes`` (one partition) can give."""
    partition = params.get("partition")
    if not nodes:
        return []
    problems = []
    cpus = _int(params.get("cpus_per_task"), 1) * _int(params.get("tasks_per_node"), 1)
    most = max(n.cpus for n in nodes)
    if cpus > most:
        problems.append(f"hydra.launcher.cpus_per_task={params.get('cpus_per_task')} (x tasks_per_node="
                        f"{_int(params.get('tasks_per_node'), 1)}): the nodes of partition {partition} have at most "
                        f"{most} CPUs")
    if params.get("mem_gb") is not None and _int(params.get("mem_gb"), 0) * 1024 > max(n.memory_mb for n in nodes):
        most = max(n.memory_mb for n in nodes)
        problems.append(f"hydra.launcher.mem_gb={params.get('mem_gb')}: the nodes of partition {partition} have at "
                        f"most {most} MB ({most // 1024} GB) for jobs")
    gpus = _int(params.get("gpus_per_node"), 0)
    if gpus > max(n.gpus for n in nodes):
        problems.append(f"hydra.launcher.gpus_per_node={gpus}: the nodes of partition {partition} have at most "
                        f"{max(n.gpus for n in nodes)} GPUs")
    tasks = _int(params.get("tasks_per_node"), 1)
    if 0 < gpus < tasks:
        problems.append(f"hydra.launcher.tasks_per_node={tasks} with gpus_per_node={gpus}: each process of a "
                        f"distributed job takes the GPU of its local rank; ask for as many GPUs as tasks per node")
    if _int(params.get("nodes"), 1) > len(nodes):
        problems.append(f"hydra.launcher.nodes={params.get('nodes')}: partition {partition} has {len(nodes)} node(s)")
    limit = nodes[0].time_limit_min
    if limit is not None and params.get("timeout_min") is not None and float(params["timeout_min"]) > limit:
        problems.append(f"hydra.launcher.timeout_min={params.get('timeout_min')}: partition {partition} allows at "
                        f"most {limit:g} minutes")
    if not any(n.usable for n in nodes):
        problems.append(f"every node of partition {partition} is down or drained "
                        f"({', '.join(f'{n.name} {n.state}' for n in nodes[:5])}; sinfo -R says why): pick another "
                        f"hydra.launcher.partition")
    return problems


def check_request(params: Mapping[str, object]) -> Optional[str]:
    """One paragraph saying what to change, if the request cannot run on ``params['partition']``; else None."""
    partition = str(params.get("partition"))
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return ("sbatch and sinfo are not on PATH: hydra/launcher=cluster submits from a machine of a Slurm cluster "
                "(its login node); for a test cluster on this machine: sudo scripts/local_slurm.sh start.")
    try:
        nodes = read_nodes(partition)
    except SlurmUnreachable as error:
        return (f"Slurm does not answer here (sinfo: {error}): is this a machine of the cluster, and is its "
                f"controller up (scontrol ping)? For a test cluster on this machine: "
                f"sudo scripts/local_slurm.sh start.")
    if not nodes:
        known = partitions()
        return (f"hydra.launcher.partition={partition}: no such partition on this cluster"
                + (f" (sinfo lists: {', '.join(known)})" if known else "") + ".")
    problems = request_problems(params, nodes)
    if not problems:
        return None
    return (f"The sweep's jobs cannot run on partition {partition}: " + "; ".join(problems) + ". Lower the "
            "setting (sinfo -o '%P %c %m %G %l' lists what each partition offers); nothing was submitted.")
