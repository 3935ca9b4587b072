"""Uses found by use: each use's gradient, the sum and grad_scale's effect, checked against float64
untied replays (one fresh leaf per use) written here, independently of the lens."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments.errors import UseNotFound
from experiments.tying import apply_param_ties
from experiments.uses import UNATTRIBUTED, Uses, discover_uses


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().double().requires_grad_()


def captured(model, loss_of, scales=None):
    """One captured step through the lens: ({param: {use: grad}}, {param: why unsplit})."""
    uses = Uses(model, scales)
    uses.arm(capture=True)
    model.zero_grad()
    loss_of(model).backward()
    uses.end()
    return uses.attribute()


def assert_uses(got, expected, grad):
    """``got``: the lens's uses of one parameter; ``expected``: use -> replayed gradient; their sum is ``.grad``."""
    assert list(got) == list(expected)  # forward order, no unattributed part
    for use, want in expected.items():
        torch.testing.assert_close(got[use], want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, sum(expected.values()), rtol=1e-10, atol=1e-12)


class TinyLM(nn.Module):
    """An embedding tied to its head: as an attribute (``head.weight``) or read functionally."""

    def __init__(self, vocab=11, dim=6, functional=False):
        super().__init__()
        self.wte, self.mix, self.functional = nn.Embedding(vocab, dim), nn.Linear(dim, dim), functional
        if not functional:
            self.head = nn.Linear(dim, vocab, bias=False)
            self.head.weight = self.wte.weight

    def forward(self, x):
        h = torch.tanh(self.mix(self.wte(x)))
        return F.linear(h, self.wte.weight) if self.functional else self.head(h)


def tiny_lm_replay(model, x, y, out_scale=1.0):
    """Untied: the input and output uses of the embedding are two leaves."""
    e_in, e_out = leaf(model.wte.weight), leaf(model.wte.weight)
    m, b = leaf(model.mix.weight), leaf(model.mix.bias)
    h = torch.tanh(F.embedding(x, e_in) @ m.T + b)
    F.cross_entropy(h @ e_out.T, y).backward()
    return e_in.grad, e_out.grad * out_scale


@pytest.mark.parametrize("functional", [False, True])
def test_embedding_tied_to_its_head(functional):
    torch.manual_seed(0)
    model = TinyLM(functional=functional).double()
    x, y = torch.randint(0, 11, (9,)), torch.randint(0, 11, (9,))
    shared, unsplit = captured(model, lambda m: F.cross_entropy(m(x), y))
    g_in, g_out = tiny_lm_replay(model, x, y)
    out_use = "wte.weight@TinyLM" if functional else "head.weight"
    assert list(shared) == ["wte.weight"] and not unsplit
    assert_uses(shared["wte.weight"], {"wte.weight": g_in, out_use: g_out}, model.wte.weight.grad)

    scaled, _ = captured(model, lambda m: F.cross_entropy(m(x), y), scales={out_use: 0.5})
    g_in, g_half = tiny_lm_replay(model, x, y, out_scale=0.5)
    assert_uses(scaled["wte.weight"], {"wte.weight": g_in, out_use: g_half}, model.wte.weight.grad)


class Deep(nn.Module):
    """One Linear called at three depths."""

    def __init__(self):
        super().__init__()
        self.inp, self.block, self.out = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 1)

    def forward(self, x):
        h = self.inp(x)
        for _ in range(3):
            h = torch.tanh(self.block(h))
        return self.out(h)


def deep_replay(model, x, penalty=0.0):
    ws = [leaf(model.block.weight) for _ in range(3)]
    w_pen = leaf(model.block.weight)
    h = x @ model.inp.weight.double().T + model.inp.bias.double()
    for w in ws:
        h = torch.tanh(h @ w.T + model.block.bias.double())
    loss = (h @ model.out.weight.double().T + model.out.bias.double()).pow(2).mean() + penalty * w_pen.pow(2).sum()
    loss.backward()
    return [w.grad for w in ws], w_pen.grad


def test_a_layer_called_at_three_depths_and_an_l2_penalty_on_it():
    torch.manual_seed(0)
    model = Deep().double()
    x = torch.randn(7, 3, dtype=torch.float64)
    shared, _ = captured(model, lambda m: m(x).pow(2).mean())
    (g0, g1, g2), _ = deep_replay(model, x)
    assert_uses(shared["block.weight"], {"block.weight": g0, "block#1.weight": g1, "block#2.weight": g2},
                model.block.weight.grad)
    assert list(shared) == ["block.weight", "block.bias"]  # inp and out are read once: not shared

    shared, _ = captured(model, lambda m: m(x).pow(2).mean() + 0.1 * m.block.weight.pow(2).sum())
    (g0, g1, g2), g_pen = deep_replay(model, x, penalty=0.1)
    assert_uses(shared["block.weight"], {"block.weight": g0, "block#1.weight": g1, "block#2.weight": g2,
                                         "block.weight@outside": g_pen}, model.block.weight.grad)


def test_our_tied_network_keeps_its_names_and_a_parameter_tied_between_modules():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(3, 4), shared, nn.ReLU(), shared, nn.Linear(4, 1)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    got, _ = captured(model, lambda m: m(x).pow(2).sum())
    untied = nn.Sequential(*[copy.deepcopy(m) for m in model])
    untied(x).pow(2).sum().backward()
    assert_uses(got["1.weight"], {"1.weight": untied[1].weight.grad, "3.weight": untied[3].weight.grad},
                shared.weight.grad)

    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    apply_param_ties(model, [["0.weight", "2.weight"]])
    x = torch.randn(6, 4, dtype=torch.float64)
    got, _ = captured(model, lambda m: m(x).pow(2).sum())
    untied = nn.Sequential(*[copy.deepcopy(m) for m in model])
    untied[2].weight = nn.Parameter(untied[0].weight.detach().clone())
    untied(x).pow(2).sum().backward()
    assert list(got) == ["0.weight"]
    assert_uses(got["0.weight"], {"0.weight": untied[0].weight.grad, "2.weight": untied[2].weight.grad},
                model[0].weight.grad)


def test_frozen_and_no_grad_reads_are_not_uses():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    shared.weight.requires_grad_(False)  # trainer.freeze
    got, _ = captured(model, lambda m: m(torch.randn(3, 4)).sum())
    assert list(got) == ["0.bias"] and list(got["0.bias"]) == ["0.bias", "2.bias"]
    uses = Uses(model)
    model.zero_grad()
    uses.arm(capture=True)
    with torch.no_grad():
        model(torch.randn(3, 4))
    uses.end()
    assert uses.attribute() == ({}, {})


class Doubler(torch.autograd.Function):
    """A custom autograd function: the lens cannot see the parameter's use inside it."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.T

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad @ w, grad.T @ x


def test_what_no_use_carried_is_the_unattributed_use():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4, bias=False).double()
    x = torch.randn(5, 4, dtype=torch.float64)

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return Doubler.apply(self.lin(x), self.lin.weight)  # one use seen, one inside a custom function

    model = Mixed()
    got, unsplit = captured(model, lambda m: m(x).pow(2).sum())
    w1, w2 = leaf(lin.weight), leaf(lin.weight)
    ((x @ w1.T) @ w2.T).pow(2).sum().backward()
    assert not unsplit
    assert_uses(got["lin.weight"], {"lin.weight": w1.grad, UNATTRIBUTED: w2.grad}, lin.weight.grad)

    class Hidden(nn.Module):  # its only use inside the custom function: nothing to split, said so
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4, dtype=torch.float64))

        def forward(self, x):
            return Doubler.apply(x, self.w)

    got, unsplit = captured(Hidden(), lambda m: m(x).pow(2).sum())
    assert got == {} and list(unsplit) == ["w"]


def test_reentrant_checkpointing_is_unattributed_and_non_reentrant_is_exact():
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    model = Deep().double()
    x = torch.randn(7, 3, dtype=torch.float64)
    (g0, g1, g2), _ = deep_replay(model, x)

    class Checkpointed(nn.Module):
        def __init__(self, reentrant):
            super().__init__()
            self.deep, self.reentrant = model, reentrant

        def forward(self, x):
            h = self.deep.inp(x)
            for _ in range(3):
                h = checkpoint(lambda t: torch.tanh(self.deep.block(t)), h, use_reentrant=self.reentrant)
            return self.deep.out(h)

    got, _ = captured(Checkpointed(False), lambda m: m(x).pow(2).mean())
    assert_uses(got["deep.block.weight"], {"deep.block.weight": g0, "deep.block#1.weight": g1,
                                           "deep.block#2.weight": g2}, model.block.weight.grad)
    uses = Uses(Checkpointed(True))
    uses.arm(capture=True)
    model.zero_grad()
    Checkpointed(True)(x.requires_grad_()).pow(2).mean().backward()
    uses.end()
    shared, unsplit = uses.attribute()
    assert uses.calls.recomputed and "deep.block.weight" not in shared
    assert set(unsplit) >= {"deep.block.weight", "deep.block.bias"}  # said, never silent


def test_grad_scale_acts_on_every_step_and_names_the_uses_that_occurred():
    torch.manual_seed(0)
    model = Deep().double()
    x = torch.randn(7, 3, dtype=torch.float64)
    (g0, g1, g2), _ = deep_replay(model, x)
    uses = Uses(model, {"block#1.weight": 3.0, "block#2.*": 0.0})  # a glob: block#2.weight and block#2.bias
    for _ in range(3):  # quiet steps: no capture, the scale still acts
        uses.arm(capture=False)
        model.zero_grad()
        model(x).pow(2).mean().backward()
        uses.end()
        torch.testing.assert_close(model.block.weight.grad, g0 + 3.0 * g1)
    uses.close()
    model.zero_grad()
    model(x).pow(2).mean().backward()
    torch.testing.assert_close(model.block.weight.grad, g0 + g1 + g2)  # closed: no scaling any more

    with pytest.raises(UseNotFound, match=r"'block#5.weight' matched no use.*block.weight, block.bias, "
                                          r"block#1.weight, block#1.bias, block#2.weight"):
        discover_uses(model, x, {"block#5.weight": 2.0})
    discover_uses(model, x, {"block#2.weight": 2.0})  # a use that occurs: fine


def test_hugging_face_gpt2_and_albert_uses_equal_their_untied_twins():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    x = torch.randint(0, 32, (2, 8))

    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=16, n_head=2, vocab_size=32, n_positions=16, bos_token_id=0, eos_token_id=0)).double()
    twin = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=16, n_head=2, vocab_size=32, n_positions=16, bos_token_id=0, eos_token_id=0,
        tie_word_embeddings=False)).double()
    twin.load_state_dict(gpt.state_dict())
    assert twin.lm_head.weight is not twin.transformer.wte.weight
    gpt.eval(), twin.eval()
    got, unsplit = captured(gpt, lambda m: m(x).logits.pow(2).mean())
    twin(x).logits.pow(2).mean().backward()
    assert list(got) == ["transformer.wte.weight"] and not unsplit
    assert_uses(got["transformer.wte.weight"], {"transformer.wte.weight": twin.transformer.wte.weight.grad,
                                                "lm_head.weight": twin.lm_head.weight.grad},
                gpt.transformer.wte.weight.grad)

    config = dict(vocab_size=32, embedding_size=8, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                  num_hidden_layers=3, max_position_embeddings=16, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    albert = transformers.AlbertForMaskedLM(transformers.AlbertConfig(num_hidden_groups=1, **config)).double()
    twin = transformers.AlbertForMaskedLM(transformers.AlbertConfig(num_hidden_groups=3, tie_word_embeddings=False,
                                                                    **config)).double()
    state = albert.state_dict()
    for key, value in list(state.items()):  # the one group's weights copied into each depth's own group
        if ".albert_layer_groups.0." in key:
            for k in (1, 2):
                state[key.replace(".albert_layer_groups.0.", f".albert_layer_groups.{k}.")] = value
    twin.load_state_dict(state)
    albert.eval(), twin.eval()
    got, unsplit = captured(albert, lambda m: m(x).logits.pow(2).mean())
    twin(x).logits.pow(2).mean().backward()
    assert not unsplit
    layer = "albert.encoder.albert_layer_groups.{k}.albert_layers.0"
    query = f"{layer.format(k=0)}.attention.query"
    twins = dict(twin.named_parameters())
    assert_uses(got[f"{query}.weight"], {f"{query}{s}.weight": twins[f"{layer.format(k=k)}.attention.query.weight"].grad
                                         for k, s in enumerate(["", "#1", "#2"])},
                dict(albert.named_parameters())[f"{query}.weight"].grad)
    emb = "albert.embeddings.word_embeddings.weight"
    assert_uses(got[emb], {emb: twins[emb].grad, "predictions.decoder.weight": twins["predictions.decoder.weight"].grad},
                dict(albert.named_parameters())[emb].grad)
    per_depth = [n for n in got if ".albert_layer_groups.0." in n]
    assert len(per_depth) == sum(1 for n, _ in albert.named_parameters() if ".albert_layer_groups.0." in n)


def test_under_bf16_autocast_each_use_stays_float32_and_they_add_up():
    torch.manual_seed(0)
    model = TinyLM(functional=True)
    x, y = torch.randint(0, 11, (9,)), torch.randint(0, 11, (9,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        shared, unsplit = captured(model, lambda m: F.cross_entropy(m(x).float(), y))
    uses = shared["wte.weight"]
    assert list(uses) == ["wte.weight", "wte.weight@TinyLM"] and not unsplit  # no unattributed part
    assert all(g.dtype == torch.float32 for g in uses.values())
    torch.testing.assert_close(sum(uses.values()), model.wte.weight.grad)
