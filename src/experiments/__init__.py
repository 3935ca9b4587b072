"""Config-driven experiments that show what parameters do inside a neural network.

The lens in your own training loop (``experiments.lens``)::

    from experiments import watch
    lens = watch(model, log_dir="runs/mine", every=10)   # then lens.step(step, loss) after each backward

The notebook API (imported on first use, so ``import experiments`` stays cheap)::

    from experiments import compose_model, load_run, parameter_table
"""

_API = {"compose_config": "config", "compose_model": "inspection", "load_run": "inspection",
        "parameter_table": "inspection", "watch": "lens", "Lens": "lens"}
__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module 'experiments' has no attribute {name!r}")
