"""The text of ``python train.py --help``: the groups a user chooses from, then the composed config.

Hydra's own help lists every config group that does not start with ``hydra/``, which includes our
internal ``schema/*`` groups and leaves out the launchers and sweepers. ``conf/hydra/help/
experiments.yaml`` uses the ``${experiments_help:${hydra.runtime.choices}}`` resolver registered
here instead: it lists, from the config search path Hydra is using (so a group or option added to
``conf/`` or through ``hydra.searchpath`` shows up by itself),

- the user's groups (everything but ``hydra/*`` and ``schema/*``), the option each group's default or
  the command's override chose marked with ``*``, the defaults list's groups first;
- Hydra's launchers and sweepers, with an example command each.
"""

from __future__ import annotations

from typing import Dict, List, Mapping

from omegaconf import OmegaConf

INTERNAL = ("schema",)  # our dataclass schemas: named by the YAMLs, never chosen by a user
SWEEP_GROUPS = ("hydra/launcher", "hydra/sweeper")
ORDER = ("model", "init", "data", "optim", "trainer", "telemetry")  # first, as in conf/config.yaml; then the rest
EXAMPLES = {  # group -> example command ({option}: the group's first option)
    "experiment": "python train.py -m experiment={option}   (a preset sweep; then python scripts/report.py <sweep>)",
    "hparams_search": "python train.py -m hparams_search={option}",
    "hydra/launcher": "python train.py -m hydra/launcher=joblib init=normal,xavier   (Slurm: hydra/launcher=cluster "
                      "hydra.launcher.partition=<partition>)",
}


def config_groups() -> Dict[str, List[str]]:
    """Every config group Hydra can see right now (nested ones as ``a/b``), with its options, sorted."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    loader = GlobalHydra.instance().config_loader()
    found: Dict[str, List[str]] = {}

    def walk(parent: str) -> None:
        for name in loader.list_groups(parent):
            group = f"{parent}/{name}" if parent else name
            options = loader.get_group_options(group, ObjectType.CONFIG)
            if options:
                found[group] = sorted(options)
            walk(group)

    walk("")
    return found


def _line(group: str, options: List[str], chosen: str) -> str:
    text = f"  {group}: " + ", ".join(o + "*" * (o == chosen) for o in options)
    example = EXAMPLES.get(group)
    if example:
        text += f"\n      e.g. {example.format(option=options[0])}"
    return text


def groups_help(choices: Mapping[str, object]) -> str:
    """The groups part of ``--help`` (the ``experiments_help`` resolver); ``choices`` is
    ``hydra.runtime.choices``."""
    choices = OmegaConf.to_container(choices) if OmegaConf.is_config(choices) else dict(choices)
    groups = config_groups()
    order = [*ORDER, *sorted(groups)]
    mine = [g for g in dict.fromkeys(order) if g in groups and g != "hydra"
            and not g.startswith(("hydra/", *(f"{i}/" for i in INTERNAL))) and g not in INTERNAL]
    lines = [_line(g, groups[g], str(choices.get(g))) for g in mine]
    lines += ["", "== Sweeps: python train.py -m group=a,b key=1,2 runs one job per combination ==",
              "Where the jobs run (hydra/launcher) and how values are picked (hydra/sweeper):"]
    lines += [_line(g, groups[g], str(choices.get(g))) for g in SWEEP_GROUPS if g in groups]
    return "\n".join(lines)


def register_help_resolver() -> None:
    OmegaConf.register_new_resolver("experiments_help", groups_help, replace=True)
