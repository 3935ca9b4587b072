"""What a run writes once: its config as text, its ties, and its hparams (TensorBoard's HParams tab)."""

from __future__ import annotations

from typing import Dict, List, Mapping

from omegaconf import DictConfig, OmegaConf


def ties_markdown(manifest: Mapping[str, List[str]]) -> str:
    if not manifest:
        return "No tied parameters."
    rows = [f"| {name} | {', '.join(aliases)} |" for name, aliases in manifest.items()]
    return "\n".join(["| parameter | aliases (state_dict names) |", "|---|---|", *rows])


def flat_hparams(cfg: DictConfig, choices: Mapping[str, str]) -> Dict[str, object]:
    """The chosen config groups plus every scalar setting (lists and layer specs left out)."""
    values: Dict[str, object] = {g: str(c) for g, c in choices.items() if not g.startswith("hydra")}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, (int, float, str, bool)) and not str(key).startswith("_"):
                values[f"{prefix}{key}"] = value
            elif isinstance(value, Mapping) and key not in ("shared", "args", "telemetry"):
                walk(value, f"{prefix}{key}.")

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return values
