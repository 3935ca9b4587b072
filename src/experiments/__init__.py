"""Config-driven experiments that show what parameters do inside a neural network.

The notebook API (imported on first use, so ``import experiments`` stays cheap)::

    from experiments import compose_model, load_run, parameter_table
"""

_API = {"compose_config", "compose_model", "load_run", "parameter_table"}


def __getattr__(name):
    if name in _API:
        from . import inspection

        return getattr(inspection, name)
    raise AttributeError(f"module 'experiments' has no attribute {name!r}")
