"""watch() in a plain PyTorch training loop (the "watch() in your training loop" page's example).

    python docs/examples/watch_loop.py                  # logs into runs/watch_loop
    tensorboard --logdir runs                           # then look at tied/wte.weight/...

The model is nanoGPT-shaped: its output head reads the token embedding's weight through ``F.linear``,
so one Parameter has two uses, the embedding's (``wte.weight``) and the head's (``wte.weight@TinyGPT``:
the parameter, read by the model's own forward). The lens finds both and logs each one's gradient;
``grad_scale`` halves the head's on every step.
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn

from experiments import watch

VOCAB, DIM = 32, 16


class TinyGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, DIM)
        self.mix = nn.Linear(DIM, DIM)

    def forward(self, ids):
        h = torch.tanh(self.mix(self.wte(ids)))
        return F.linear(h, self.wte.weight)  # the head: a second use of wte.weight


def batches(steps: int, size: int = 64):
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randint(0, VOCAB, (size,), generator=g)
        yield x, (3 * x + 1) % VOCAB  # the token that follows x


def main(log_dir: str = "runs/watch_loop", steps: int = 200):
    torch.manual_seed(0)
    model = TinyGPT()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    lens = watch(model, log_dir=log_dir, every=10, total_steps=steps, grad_scale={"wte.weight@TinyGPT": 0.5})
    for step, (x, y) in enumerate(batches(steps), start=1):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        lens.step(step, loss)  # after backward, before optimizer.step(): logs what is due
        optimizer.step()
        optimizer.zero_grad()
    uses = lens.uses()  # {parameter: {use: gradient}} of the last logged step
    lens.close()
    for param, grads in uses.items():
        print(param, {use: f"{g.norm().item():.3g}" for use, g in grads.items()})
    print(f"loss at step {steps}: {loss.item():.4f}")
    return loss.item(), uses


if __name__ == "__main__":
    main(*sys.argv[1:2])
