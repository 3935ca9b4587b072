"""What Slurm says about a sweep's jobs while the sweep waits: states, pending reasons, a progress line.

``squeue -h -r -t all -j <id> -o '%i|%T|%r'`` lists every task of a job array (``17_0``, ``17_1``,
...) with its state and, while it pends, the reason; finished tasks stay listed for Slurm's
``MinJobAge`` (300 s by default), which gives their end state without accounting (sacct).

A pending reason that waiting never clears (the request exceeds what the partition or the
account allows, the nodes it needs are down or drained) is turned into the setting to change
(:func:`stuck_reason`).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from typing import Dict, Mapping, Optional, Tuple

# States of a job that is over. A job over without a result file never sent one (cancelled, killed).
TERMINAL = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}

RESOURCES = ("cpus_per_task", "tasks_per_node", "mem_gb", "gpus_per_node", "nodes", "timeout_min")
SIZES = "sinfo -o '%P %c %m %G %l' lists each partition's CPUs, memory (MB), GPUs and time limit"
NODES_DOWN = ("the nodes it needs are down, drained or not available to it (sinfo -R says why): pick another "
              "hydra.launcher.partition, lower hydra.launcher.nodes, or drop hydra.launcher.constraint / exclude")

# Pending reasons that never clear by waiting -> what to change ({...} are the launcher's settings).
STUCK = {
    "PartitionConfig": "the request is more than the partition allows: lower the setting that exceeds it "
                       "({resources}; " + SIZES + ")",
    "PartitionNodeLimit": "hydra.launcher.nodes={nodes} is more than the partition allows",
    "PartitionTimeLimit": "hydra.launcher.timeout_min={timeout_min} is above the partition's time limit "
                          "(sinfo -o '%P %l'): lower it",
    "ReqNodeNotAvail": NODES_DOWN,
    "Nodes required for job are DOWN": NODES_DOWN,  # Slurm 22.05 writes ReqNodeNotAvail so for a plain job
    "BadConstraints": "hydra.launcher.constraint={constraint} names a feature no node of the partition has",
    "InvalidAccount": "hydra.launcher.account={account} is not an account of yours on this cluster",
    "InvalidQOS": "hydra.launcher.qos={qos} is not a QOS of yours on this cluster",
    "DependencyNeverSatisfied": "a job it depends on failed",
}
# Per-job limits of a QOS or an association (QOSMaxCpuPerJobLimit, AssocMaxWallDurationPerJobLimit, ...)
PER_JOB_LIMIT = re.compile(r"^(?:QOS|Assoc)Max(\w*?)PerJob")
LIMITED = {"Cpu": "cpus_per_task", "Mem": "mem_gb", "Wall": "timeout_min", "Node": "nodes", "GRES": "gpus_per_node"}


def stuck_reason(reason: str, params: Mapping[str, object]) -> Optional[str]:
    """What to change when a job pends for ``reason`` that never clears by itself; None if it may clear."""
    if "maintenance" in reason.lower():  # ReqNodeNotAvail in a maintenance reservation: over when it ends
        return None
    values = {key: params.get(key) for key in ("nodes", "timeout_min", "constraint", "account", "qos")}
    values["resources"] = ", ".join(f"hydra.launcher.{k}={params.get(k)}" for k in RESOURCES)
    for prefix, advice in STUCK.items():
        if reason.startswith(prefix):
            return advice.format(**values)
    limit = PER_JOB_LIMIT.match(reason)
    if limit:
        key = next((v for k, v in LIMITED.items() if limit.group(1).startswith(k)), None)
        setting = f"lower hydra.launcher.{key} (now {params.get(key)})" if key else "ask for less"
        return f"the request is above a per-job limit of your QOS or account ({reason}; sacctmgr show qos): {setting}"
    return None


def parse_squeue(text: str) -> Dict[str, Tuple[str, str]]:
    """``squeue -o '%i|%T|%r'`` lines -> job id -> (state, reason)."""
    states = {}
    for line in text.splitlines():
        job_id, state, reason = (line.strip().split("|", 2) + ["", ""])[:3]
        if job_id:
            states[job_id] = (state, reason)
    return states


class QueueError(RuntimeError):
    """squeue did not answer."""


def read_queue(job_id: str, timeout_s: float = 30) -> Dict[str, Tuple[str, str]]:
    """State and pending reason of every task of ``job_id``, finished ones included while Slurm keeps them."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", job_id, "-o", "%i|%T|%r"],
                             capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise QueueError(str(error)) from None
    if out.returncode != 0:
        raise QueueError((out.stderr or out.stdout).strip()[:300])
    return parse_squeue(out.stdout)


def progress_line(job_id: str, states: Mapping[str, Tuple[str, str]], finished: int, total: int) -> str:
    """``Slurm job 17: 2 pending (Resources 2), 1 running, 1 of 4 finished``, from the unfinished jobs' states."""
    kinds = Counter("pending" if s.startswith("PENDING") or s.startswith("REQUEUE") else
                    "running" if s in RUNNING else s.lower() for s, _ in states.values())
    reasons = Counter(r for s, r in states.values() if s.startswith("PENDING") and r and r != "None")
    pending = f"{kinds.pop('pending', 0)} pending"
    if reasons:
        pending += " (" + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) + ")"
    others = [f"{n} {k}" for k, n in sorted(kinds.items()) if k != "running"]
    return ", ".join([f"Slurm job {job_id}: {pending}", f"{kinds.get('running', 0)} running", *others,
                      f"{finished} of {total} finished"])
