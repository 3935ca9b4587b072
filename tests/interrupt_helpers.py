"""A layer for tests/test_failures.py, importable by ``train.py`` run as a user runs it."""

import os
import signal

from torch import nn


class CtrlCWhenBuilt(nn.Identity):
    """The identity, whose construction sends this process SIGINT: Ctrl-C while the run is being set up."""

    def __init__(self):
        super().__init__()
        os.kill(os.getpid(), signal.SIGINT)
