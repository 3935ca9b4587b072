"""What a run writes once: its config as text, its ties, and its hparams (TensorBoard's HParams tab)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Set

from omegaconf import DictConfig, OmegaConf

ALWAYS = ("model", "init", "data", "optim")  # groups a single run shows even at their default choice
IN_A_SWEEP = ("model", "init")  # groups a sweep's jobs show whether or not the sweep varies them


def ties_markdown(manifest: Mapping[str, List[str]]) -> str:
    if not manifest:
        return "No tied parameters."
    rows = [f"| {name} | {', '.join(aliases)} |" for name, aliases in manifest.items()]
    return "\n".join(["| parameter | aliases (state_dict names) |", "|---|---|", *rows])


def swept_keys(sweep_dir: Path) -> Optional[Set[str]]:
    """The keys and groups a sweep varies, from its ``multirun.yaml``: overrides with several values
    (``init=normal,xavier``, ``range(3)``, ...) and an Optuna search's parameters. None if unknown."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ..run_files import load_yaml

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    saved = load_yaml(path)
    overrides = OverridesParser.create().parse_overrides(list(saved.hydra.overrides.task))
    swept = {o.key_or_group for o in overrides if o.is_sweep_override()}
    params = OmegaConf.select(saved, "hydra.sweeper.params") or {}
    return swept | set(params)


def hparam_values(cfg: DictConfig, choices: Mapping[str, str], overrides: Sequence[str],
                  swept: Optional[Set[str]] = None) -> Dict[str, object]:
    """What the HParams tab shows. A single run: its config groups (model, init, data, optim, and
    any other not at its default) and every key its command line set (``optim.lr=0.01``). A job of
    a sweep (``swept``: what the sweep varies): model, init and what the sweep varies, nothing else.

    Few columns on purpose: TensorBoard shows the first few hparams, in alphabetical order, and
    cannot tell which differ (tensorflow/tensorboard#4770, #6348); logging only what varies keeps
    a sweep's settings on screen instead of dozens of identical defaults.
    """
    def shown(group: str, choice) -> bool:
        if group.startswith(("hydra", "schema")):
            return False
        if swept is not None:
            return group in IN_A_SWEEP or group in swept
        return group in ALWAYS or choice not in (None, "default")

    values: Dict[str, object] = {g: str(c) for g, c in choices.items() if shown(g, c)}
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        if key.startswith("hydra.") or "." not in key or key in values or (swept is not None and key not in swept):
            continue
        value = OmegaConf.select(cfg, key)
        values[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return values


