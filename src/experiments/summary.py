"""A model summary that counts tied parameters once.

One row per unique parameter (as ``named_parameters()`` lists them) with every name it
goes by, so the rows add up to the unique total. Lightning's summary counts a tied
parameter once per module that holds it; this one does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional

from torch import nn

from .tying import parameter_aliases


@dataclass
class ParamRow:
    name: str  # canonical name: the one named_parameters() gives
    aliases: List[str]  # every state_dict name of this parameter, canonical first
    shape: List[int]
    count: int
    uses: int  # how many names (places in the model) share it
    requires_grad: bool
    init: str  # the init rule that set it

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


def parameter_rows(model: nn.Module, init_rules: Optional[Mapping[str, str]] = None) -> List[ParamRow]:
    aliases = parameter_aliases(model)
    init_rules = init_rules or {}
    return [
        ParamRow(name, aliases[name], list(p.shape), p.numel(), len(aliases[name]), p.requires_grad,
                 init_rules.get(name, "unknown"))
        for name, p in model.named_parameters()
    ]


def totals(model: nn.Module) -> Dict[str, int]:
    """Unique parameters vs. ``state_dict`` entries: they differ when layers are tied."""
    state = model.state_dict()
    unique = list(model.parameters())
    return {
        "unique_tensors": len(unique),
        "unique_numbers": sum(p.numel() for p in unique),
        "state_dict_entries": len(state),
        "state_dict_numbers": sum(t.numel() for t in state.values()),
        "trainable_numbers": sum(p.numel() for p in unique if p.requires_grad),
    }


def summary_markdown(model: nn.Module, init_rules: Optional[Mapping[str, str]] = None) -> str:
    rows = parameter_rows(model, init_rules)
    t = totals(model)
    lines = ["| parameter | aliases | shape | count | uses | init |", "|---|---|---|---:|---:|---|"]
    lines += [f"| {r.name} | {', '.join(r.aliases)} | {tuple(r.shape)} | {r.count} | {r.uses} | {r.init} |"
              for r in rows]
    lines.append(f"| **total (each counted once)** | | | **{t['unique_numbers']}** | | |")
    lines.append("")
    lines.append(f"{t['unique_tensors']} unique parameter tensors; the state_dict has "
                 f"{t['state_dict_entries']} entries holding {t['state_dict_numbers']} numbers.")
    return "\n".join(lines)
