"""The output rule (outputs.py): which tensor of a model's output is scored, at which position, and
the error for an output the task cannot use."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments.data import Dataset
from experiments.errors import ConfigError
from experiments.objective import evaluate
from experiments.outputs import check_output, logits, predictions


class Output(OrderedDict):
    """What a Hugging Face ModelOutput is: an ordered dict whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


T = torch.randn(4, 5)


@pytest.mark.parametrize("output", [T, (T, "state"), [T], Output(loss=None, logits=T), {"logits": T}],
                         ids=["tensor", "tuple", "list", "model_output", "mapping"])
def test_the_logits_are_found_in_every_kind_of_output(output):
    assert logits(output) is T and predictions(output, "classification") is T


@pytest.mark.parametrize("output", ["text", (), ("text", T), {"hidden": T}, None])
def test_an_output_without_logits_gives_none(output):
    assert logits(output) is None


def test_per_position_logits_are_scored_at_the_last_position_for_next_tokens():
    per_position = torch.randn(3, 8, 10)
    assert torch.equal(predictions(per_position, "next_token"), per_position[:, -1])
    assert torch.equal(predictions(Output(logits=per_position), "next_token"), per_position[:, -1])
    flat = torch.randn(3, 10)
    assert predictions(flat, "next_token") is flat


X = torch.zeros(6, 8, dtype=torch.long)  # 6 windows of 8 token ids


@pytest.mark.parametrize("shape", [(6, 10), (6, 8, 10)])
def test_usable_next_token_shapes_pass(shape):
    check_output(torch.zeros(shape), X, torch.zeros(6, dtype=torch.long), "next_token", 10, "m")


@pytest.mark.parametrize("output, task, y, message", [
    (torch.zeros(6, 8, 11), "next_token", torch.zeros(6, dtype=torch.long),
     r"m: the model's output has shape \(6, 8, 11\) for a batch of 6, which the next_token task cannot score; it "
     r"expects \(batch, 10\): the next token's logits over data.num_outputs=10 tokens, or \(batch, 8, 10\)"),
    (Output(logits=torch.zeros(6, 7, 10)), "next_token", torch.zeros(6, dtype=torch.long),
     r"output \(its logits\) has shape \(6, 7, 10\).*data.context=8 positions"),
    (torch.zeros(6, 10, dtype=torch.long), "next_token", torch.zeros(6, dtype=torch.long),
     r"shape \(6, 10\) torch.int64 \(not floating-point\)"),
    (torch.zeros(6), "regression", torch.zeros(6, 1), r"shape \(6\) .*regression task cannot score; it expects "
                                                       r"\(6, 1\): one value per target"),
    (torch.zeros(6, 3), "classification", torch.zeros(6, dtype=torch.long),
     r"classification task cannot score; it expects \(batch, 10\): one logit per class"),
    ({"hidden": torch.zeros(6, 10)}, "classification", torch.zeros(6, dtype=torch.long),
     r"returned a builtins.dict, which holds no tensor of predictions"),
])
def test_an_output_the_task_cannot_use_is_named_with_what_it_expects(output, task, y, message):
    with pytest.raises(ConfigError, match=message):
        check_output(output, X if task == "next_token" else torch.zeros(6, 2), y, task, 10 if task != "regression"
                     else 1, "m")


class Causal(nn.Module):
    """Per-position logits in a ModelOutput, as a causal LM returns them."""

    def __init__(self, vocab=7):
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, 4), nn.Linear(4, vocab)

    def forward(self, ids):
        return Output(logits=self.head(self.embed(ids).cumsum(1)))


def test_evaluation_scores_the_same_position_as_training():
    """loss/val is the mean cross-entropy of the last position's logits, computed here independently."""
    torch.manual_seed(0)
    model = Causal()
    x, y = torch.randint(0, 7, (50, 5)), torch.randint(0, 7, (50,))
    data = Dataset(x, y, x, y, "next_token", 10, 7)
    metrics = evaluate(model, data, chunk=16)
    with torch.no_grad():
        last = model.head(model.embed(x).cumsum(1))[:, -1]
    assert metrics["loss/val"] == pytest.approx(F.cross_entropy(last, y).item(), rel=1e-6)
    assert metrics["acc/val"] == pytest.approx((last.argmax(-1) == y).float().mean().item())
    every = F.cross_entropy(model.head(model.embed(x).cumsum(1)).flatten(0, 1), torch.cat([x[:, 1:], y[:, None]], 1)
                            .flatten()).item()
    assert metrics["loss/val"] != pytest.approx(every, rel=1e-3)  # not every position
