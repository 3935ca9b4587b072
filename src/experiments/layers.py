"""Layers of our own, for the places people really share parameters. Named in YAML by
``_target_: experiments.layers.<Class>`` like any ``torch.nn`` module.

- :class:`Unrolled`: a recurrent cell applied at every time step, in Python, so that every step
  is a separate, named use of the cell's parameters (``torch.nn.RNN`` runs all steps in one fused
  call, so its steps cannot be told apart).
- :class:`Residual`: ``x + Linear(act(Linear(x)))``, the block a network can share across depth.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError
from .targets import resolve

CELLS = {"rnn": nn.RNNCell, "gru": nn.GRUCell}


class Unrolled(nn.Module):
    """``cell`` (``rnn``: Elman, ``gru``) over ``steps`` time steps; input ``(batch, steps,
    input_size)``, output the last hidden state ``(batch, hidden_size)``.

    The one cell is registered once per step, as ``t0``, ``t1``, ...: like a layer used at
    several positions, ``named_parameters()`` lists its parameters once (``t0.weight_hh``) and
    ``state_dict()`` once per step (one storage), so each step is a use named by its time step
    (``t5.weight_hh``), seen by the per-use telemetry and ``model.grad_scale``.
    """

    def __init__(self, input_size: int, hidden_size: int, steps: int, cell: str = "rnn",
                 nonlinearity: str = "tanh"):
        super().__init__()
        if cell not in CELLS:
            raise ConfigError(f"model.cell={cell!r}: unknown cell; use one of {', '.join(CELLS)}.")
        if steps < 1:
            raise ConfigError(f"Unrolled: steps={steps}: must be at least 1 (data.context).")
        kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        shared = CELLS[cell](input_size, hidden_size, **kwargs)
        self.steps, self.hidden_size = steps, hidden_size
        for t in range(steps):
            self.add_module(f"t{t}", shared)

    @property
    def cell(self) -> nn.Module:
        return self.t0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.steps:
            raise ValueError(f"Unrolled expects (batch, {self.steps}, features), got {tuple(x.shape)}")
        h = x.new_zeros(x.shape[0], self.hidden_size)
        for t in range(self.steps):
            h = self._modules[f"t{t}"](x[:, t], h)  # the same cell: use t
        return h

    def __repr__(self) -> str:
        return f"Unrolled(\n  (t0..t{self.steps - 1}): {self.cell!r}  # one cell, {self.steps} time steps\n)"


class Residual(nn.Module):
    """``x + outer(activation(inner(x)))`` with ``inner``, ``outer`` of shape ``(width, width)``."""

    def __init__(self, width: int, activation: str = "torch.nn.ReLU"):
        super().__init__()
        self.inner = nn.Linear(width, width)
        self.act = resolve(activation, "model.activation")()
        self.outer = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.outer(self.act(self.inner(x)))
