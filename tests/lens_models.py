"""Small models the lens tests share (tests/test_lens.py, tests/test_lightning_callback.py)."""

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM = 11, 6


class TinyLM(nn.Module):
    """nanoGPT-style: the head reads the embedding's weight through F.linear."""

    def __init__(self):
        super().__init__()
        self.wte, self.mix = nn.Embedding(VOCAB, DIM), nn.Linear(DIM, DIM)

    def forward(self, x):
        return F.linear(torch.tanh(self.mix(self.wte(x))), self.wte.weight)
