"""Inspect a configured model's parameters, or a finished run's.

    python scripts/inspect_params.py model=tied init=xavier                 # tree, parameter table, totals, ties
    python scripts/inspect_params.py model=mlp layer=2                        # net[2].state_dict(), as the seed prints it
    python scripts/inspect_params.py model=nested param="0.block 1.2.weight"  # one parameter's values (and .grad)
    python scripts/inspect_params.py model=tied format=json                   # the same content as JSON
    python scripts/inspect_params.py run=outputs/2026-11-22/10-30-00.412345-tied-xavier compare=init   # a run's final weights vs its initial
    python scripts/inspect_params.py run=<run folder> weights=step_00000320          # a named checkpoint
    python scripts/inspect_params.py run=<run folder> allow_targets=mypkg.MyLayer    # a run that names code of yours
    python scripts/inspect_params.py model=tied --dry-run     # check the arguments and compose the config, build nothing

Every other argument is a Hydra override, as for train.py. A run folder is data: its config may name
only torch.nn modules and init functions and this project's own layers, init functions and data
loaders; allow_targets=<dotted path or glob>[,<another>] allows more, if you trust the folder.
"""

import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"  # this project's, as train.py uses the conf/ beside it
OPTIONS = {"layer", "param", "format", "run", "weights", "compare", "allow_targets"}


def main(argv):
    if {"-h", "--help", "help"} & set(argv):
        print(__doc__.strip())
        return 0
    dry_run = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
    options, overrides = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in OPTIONS:
            options[key] = value
        else:
            overrides.append(arg)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import copy

    from experiments.checkpoints import load_weights
    from experiments.errors import ConfigError, ExperimentError
    from experiments.inspection import compose_model, load_run, render_json, render_text, report
    from experiments.runs import weights_path

    try:
        if options.get("format", "text") not in ("text", "json"):
            raise ConfigError(f"format={options['format']!r}: use text or json.")
        if options.get("compare", "init") != "init":
            raise ConfigError(f"compare={options['compare']!r}: only compare=init is supported.")
        reference = None
        if dry_run:
            return dry_run_check(options, overrides)
        if "run" in options:
            if overrides:
                raise ConfigError(f"run=... uses the run's saved config; drop the overrides {' '.join(overrides)}.")
            allow = [t for t in options.get("allow_targets", "").split(",") if t]
            run = load_run(options["run"], options.get("weights", "final"), allow)
            exp = run.experiment
            if "compare" in options:
                initial = copy.deepcopy(exp.model)  # the same model, its initial weights (ties checked)
                load_weights(initial, weights_path(options["run"], "init"))
                reference = initial.state_dict()
        else:
            if {"compare", "weights", "allow_targets"} & set(options):
                raise ConfigError("compare=, weights= and allow_targets= need run=<run folder>.")
            exp = compose_model(overrides, conf_dir=CONF)
        data = report(exp, options.get("layer"), options.get("param"), reference)
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(render_json(data) if options.get("format") == "json" else render_text(data))
    return 0


def dry_run_check(options, overrides) -> int:
    """--dry-run: the options are known and valid (checked above), the overrides compose; nothing is built
    or read (a run= folder need not exist)."""
    from experiments.config import compose_config
    from experiments.errors import ConfigError

    if "run" in options and overrides:
        raise ConfigError(f"run=... uses the run's saved config; drop the overrides {' '.join(overrides)}.")
    if "run" not in options:
        compose_config(overrides, conf_dir=CONF)
    print("dry run: the arguments are valid" + ("" if "run" in options else " and the config composes"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
