"""What each use of a tied parameter is, in the words of the experiment: the labels of per-use numbers.

A use is named by its ``state_dict`` name (``5.weight``, ``1.t3.weight_ih``, ``4.inner.weight``);
its role says what it is:

- an embedding tied to an output projection (Press & Wolf 2017): *input* for the embedding's use,
  *output* for the other (numbered when there are several: ``input 2``);
- a cell unrolled in time (uses named ``...t<k>.<param>``, as ``experiments.layers.Unrolled`` names
  them): ``t-k``, the use k time steps before the last one, which the loss reads: ``t-0`` is
  next to the loss, ``t-7`` (of 8 steps) the farthest from it;
- any other shared module, a block used at several depths: ``depth k``, its k-th use counting from
  the input (uses in the model's order, ``2.weight`` before ``4.weight`` before ``10.weight``).

Training knows the model; it writes each use's role (``telemetry.use_runs.use_labels``) into the run's
event file as the text ``uses`` (:func:`roles_markdown`), from which the report reads them back
(:func:`parse_roles_markdown`). Without that text (older runs) the roles come from the names alone,
and an embedding tie is then labelled as depths.
"""

from __future__ import annotations

import re
from typing import Collection, Dict, List, Mapping, Sequence

TIME_STEP = re.compile(r"(?:^|\.)t(\d+)\.[^.]+$")  # a use named by its time step: 1.t3.weight_ih
INPUT, OUTPUT = "input", "output"
EMBEDDING, TIME, DEPTH = "embedding", "time", "depth"  # the kinds of tie


def _natural(name: str):
    """Sort key: numbers compared as numbers (``10.weight`` after ``4.weight``)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def _numbered(label: str, members: List[str]) -> Dict[str, str]:
    if len(members) == 1:
        return {members[0]: label}
    return {use: f"{label} {i}" for i, use in enumerate(members, start=1)}


def kind_of(uses: Sequence[str], embedding: Collection[str] = ()) -> str:
    """``embedding``, ``time`` or ``depth``: what kind of tie these uses make."""
    if any(u in embedding for u in uses) and any(u not in embedding for u in uses):
        return EMBEDDING
    if len(uses) > 1 and all(TIME_STEP.search(u) for u in uses):
        return TIME
    return DEPTH


def kind_of_roles(labels: Sequence[str]) -> str:
    """The kind of tie, from its uses' role labels (as :func:`roles` gives them)."""
    if any(label.startswith(INPUT) for label in labels):
        return EMBEDDING
    if labels and all(label.startswith("t-") for label in labels):
        return TIME
    return DEPTH


def roles(uses: Sequence[str], embedding: Collection[str] = ()) -> Dict[str, str]:
    """Use -> its role label, in display order (input before output, ``t-0`` first, ``depth 1`` first).
    ``embedding``: the uses that are an embedding's (the input side of an embedding tie)."""
    kind = kind_of(uses, embedding)
    if kind == EMBEDDING:
        inputs = sorted((u for u in uses if u in embedding), key=_natural)
        outputs = sorted((u for u in uses if u not in embedding), key=_natural)
        return {**_numbered(INPUT, inputs), **_numbered(OUTPUT, outputs)}
    if kind == TIME:
        steps = {u: int(TIME_STEP.search(u).group(1)) for u in uses}
        last = max(steps.values())
        return {u: f"t-{last - steps[u]}" for u in sorted(uses, key=lambda u: last - steps[u])}
    return {u: f"depth {i}" for i, u in enumerate(sorted(uses, key=_natural), start=1)}


def display_key(label: str):
    """Sort key of a role label in display order: input before output, ``t-0`` before ``t-1``, ``depth 1``
    before ``depth 2``; other labels (a use's own name) last, by name."""
    side = 0 if label.startswith(INPUT) else 1 if label.startswith(OUTPUT) else None
    numbers = re.findall(r"\d+", label)
    if side is not None:
        return (0, side, int(numbers[0]) if numbers else 0, "")
    if label.startswith(("t-", "depth ")):
        return (1, 0, int(numbers[0]), "")
    return (2, 0, 0, label)


def distance(label: str) -> int:
    """The k of a time role ``t-k`` (its distance from the loss, in time steps)."""
    return int(label[2:])


def roles_markdown(groups: Mapping[str, Mapping[str, str]]) -> str:
    """The ``use_roles`` text: a table of parameter, use and role, one row per use."""
    rows = [f"| {name} | {use} | {role} |" for name, labels in groups.items() for use, role in labels.items()]
    return "\n".join(["| parameter | use | role |", "|---|---|---|", *rows])


def parse_roles_markdown(markdown: str) -> Dict[str, Dict[str, str]]:
    """:func:`roles_markdown` read back: parameter -> {use: role}, in the order written."""
    groups: Dict[str, Dict[str, str]] = {}
    for line in markdown.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3:
            groups.setdefault(cells[0], {})[cells[1]] = cells[2]
    return groups
