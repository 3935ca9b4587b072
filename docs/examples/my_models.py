"""Models of your own, named by ``_target_`` (the "Your own model" page's examples).

    PYTHONPATH=docs/examples python train.py model=custom model._target_=my_models.TinyLM '+model.vocab=${data.num_outputs}' data=zipf_text
    PYTHONPATH=docs/examples python train.py model=custom model._target_=my_models.DepthLM '+model.vocab=${data.num_outputs}' data=zipf_text

Both take token ids ``(batch, context)`` and return logits at every position ``(batch, context, vocab)``:
the data scores the last one (the output rule).
"""

import torch
import torch.nn.functional as F
from torch import nn


def running_mean(e: torch.Tensor) -> torch.Tensor:
    """Position t sees the mean of the embeddings of tokens 0..t."""
    return e.cumsum(1) / torch.arange(1, e.shape[1] + 1, device=e.device).view(1, -1, 1)


class TinyLM(nn.Module):
    """The head is the embedding: one Parameter with two names, ``embed.weight`` and ``head.weight``."""

    def __init__(self, vocab: int, dim: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # the tie

    def forward(self, ids):
        e = self.embed(ids)
        return self.head(torch.tanh(self.mix(running_mean(e) + e)))


class DepthLM(nn.Module):
    """Sharing no name reveals: one block called at every depth, and a head that reads the embedding's
    weight through ``F.linear`` (as nanoGPT's does)."""

    def __init__(self, vocab: int, dim: int = 32, depth: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = nn.Linear(dim, dim)
        self.depth = depth

    def forward(self, ids):
        h = running_mean(self.embed(ids))
        for _ in range(self.depth):  # the same block at every depth
            h = h + torch.tanh(self.block(h))
        return F.linear(h, self.embed.weight)  # the head: the embedding's weight, read functionally
