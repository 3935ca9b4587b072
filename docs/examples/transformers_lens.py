"""The per-use lens in a transformers.Trainer: a tiny GPT-2 built from its config (nothing is downloaded),
whose lm_head.weight is its token embedding.

    pip install -e ".[transformers]"
    python docs/examples/transformers_lens.py runs/gpt2_lens
    tensorboard --logdir runs/gpt2_lens
"""

import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from experiments.transformers_callback import LensTrainerCallback

if __name__ == "__main__":
    output_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/gpt2_lens"
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    start = torch.randint(0, 64, (512, 1), generator=torch.Generator().manual_seed(0))
    rows = (start + 3 * torch.arange(16)) % 64  # sequences with a pattern to learn
    data = [{"input_ids": row, "labels": row} for row in rows]

    args = TrainingArguments(output_dir=output_dir, max_steps=60, per_device_train_batch_size=16,
                             gradient_accumulation_steps=2, learning_rate=1e-3, report_to="none",
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    # the event files go to <output_dir>/lens; the head's use of the embedding is lm_head.weight, x0.5
    lens = LensTrainerCallback(every=10, grad_scale={"lm_head.weight": 0.5})
    Trainer(model=model, args=args, train_dataset=data, callbacks=[lens]).train()
    print({name: list(uses) for name, uses in lens.lens.uses().items()})
    # {'transformer.wte.weight': ['transformer.wte.weight', 'lm_head.weight']}
