"""Telemetry: what a training run writes to TensorBoard.

- ``tags``: the tag vocabulary, written and parsed in one place (no other module spells a tag);
- ``events``: the event writer (C checksums, one event per step holding every scalar);
- ``signals``: the :class:`~.signals.Signal` base class and the simple signals (loss,
  parameter and gradient norms, update ratios, histograms); ``tied`` and ``activations``: the
  signals that watch each call of a module, through the per-call hooks of ``hooks``;
- ``monitor``: builds the signals the config enables and calls them on the steps they are due;
- ``summaries``: what a run writes once (ties, hparams);
- ``use_runs``: how TensorBoard shows each use of a tied parameter: labels (input/output, t-k, depth k),
  the Custom Scalars layout, the per-use view (a run per label) built from a run's tags.

Nothing is imported here, so ``from experiments.telemetry import tags`` stays light (the report
reads tags without importing torch).
"""
