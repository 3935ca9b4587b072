"""The per-use lens in a Lightning fit: a tiny language model whose head reads its embedding's weight.

    pip install -e ".[lightning]"
    python docs/examples/lightning_lens.py runs/lightning_lens
    tensorboard --logdir runs/lightning_lens
"""

import sys

import lightning
import torch
import torch.nn.functional as F
from torch import nn

from experiments.lightning_callback import LensCallback

VOCAB = 64


class TinyLM(nn.Module):
    """Token -> next-token logits; the head is the embedding, read with F.linear (nanoGPT-style)."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.wte, self.mix = nn.Embedding(VOCAB, dim), nn.Linear(dim, dim)

    def forward(self, x):
        return F.linear(torch.tanh(self.mix(self.wte(x))), self.wte.weight)


class LitLM(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = TinyLM()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


if __name__ == "__main__":
    log_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/lightning_lens"
    x = torch.randint(0, VOCAB, (4096,), generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(x, (5 * x + 3) % VOCAB)  # a successor to learn
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)

    # the LightningModule is watched: its parameters are model.wte.weight, ...; the head's use of the
    # embedding is model.wte.weight@model (the module `model` read it), scaled x0.5 on every step
    lens = LensCallback(log_dir, every=10, grad_scale={"model.wte.weight@model": 0.5})
    trainer = lightning.Trainer(max_steps=100, accumulate_grad_batches=2, accelerator="cpu", logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, callbacks=[lens])
    trainer.fit(LitLM(), loader)
    print({name: list(uses) for name, uses in lens.lens.uses().items()})
    # {'model.wte.weight': ['model.wte.weight', 'model.wte.weight@model']}
