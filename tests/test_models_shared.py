"""The models where parameters are really shared (conf/model/tied_lm.yaml, rnn.yaml, shared_depth.yaml),
trained by the real loop and checked against independent replays."""

import pytest
import torch
import torch.nn.functional as F

from conftest import read_events
from experiments.config import compose_config
from experiments.data import Dataset
from experiments.training import train


def tokens(cfg, seed):
    """Tiny next-token data of the test's own: random tokens, every window once."""
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, cfg.vocab, (cfg.n + cfg.context,), generator=g)
    x, y = stream.unfold(0, cfg.context, 1)[: cfg.n], stream[cfg.context:cfg.context + cfg.n]
    return Dataset(x, y, x[:16], y[:16], "next_token", cfg.batch_size, cfg.vocab)


def token_config(tmp_path, *overrides, vocab=200, context=4, n=64):
    conf = tmp_path / "conf" / "data"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "tokens.yaml").write_text(f"_target_: test_models_shared.tokens\ntask: next_token\nnum_outputs: null\n"
                                      f"vocab: {vocab}\ncontext: {context}\nn: {n}\nbatch_size: {n}\n")
    return compose_config([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "data=tokens", *overrides])


def logged(run_dir):
    acc = read_events(run_dir)
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("optim, lr", [("sgd", 0.5), ("adam", 0.01)])
def test_embedding_tie_equals_two_untied_copies(tmp_path, optim, lr):
    """tied_lm: the input use (embedding, 0.weight) and output use (5.weight) of one matrix. At every
    step, each use's logged gradient norm and rows touched, the summed gradient's norm and the
    cancellation equal a replay with two untied copies; the final weights equal the replay's, whose
    shared matrix the optimizer moved by the sum of the copies' gradients."""
    steps = 3
    cfg = token_config(tmp_path, "model=tied_lm", "model.width=6", "model.hidden=10", f"optim={optim}",
                       f"optim.lr={lr}", f"trainer.epochs={steps}", "telemetry.tied.every=1",
                       "telemetry.histograms.enabled=false")
    train(cfg, tmp_path / "run")
    values = logged(tmp_path / "run")
    data = tokens(cfg.data, cfg.trainer.seed)
    init = torch.load(tmp_path / "run" / "weights_init.pt", weights_only=True)["state_dict"]
    assert torch.equal(init["0.weight"], init["5.weight"])
    p = {k: init[k].double().clone().requires_grad_() for k in ("0.weight", "2.weight", "2.bias", "4.weight",
                                                                 "4.bias", "5.bias")}
    opt = torch.optim.SGD(p.values(), lr=lr) if optim == "sgd" else torch.optim.Adam(p.values(), lr=lr)
    for step in range(1, steps + 1):
        e_in, e_out = (p["0.weight"].detach().clone().requires_grad_() for _ in range(2))  # two untied copies
        h = F.embedding(data.train_x, e_in).flatten(1)
        h = torch.tanh(h @ p["2.weight"].T + p["2.bias"]) @ p["4.weight"].T + p["4.bias"]
        F.cross_entropy(h @ e_out.T + p["5.bias"], data.train_y).backward()
        g_in, g_out = e_in.grad, e_out.grad
        for use, g in (("0.weight", g_in), ("5.weight", g_out)):
            assert values[f"tied/0.weight/use/{use}/grad_norm"][step] == pytest.approx(g.norm().item(), rel=1e-4)
            rows = (g != 0).any(dim=1).double().mean().item()
            assert values[f"tied/0.weight/use/{use}/rows_touched"][step] == pytest.approx(rows)
        total = g_in + g_out
        assert values["tied/0.weight/grad_norm"][step] == pytest.approx(total.norm().item(), rel=1e-4)
        assert values["tied/0.weight/cancellation"][step] == pytest.approx(
            (total.norm() / (g_in.norm() + g_out.norm())).item(), rel=1e-4)
        p["0.weight"].grad = total
        opt.step()
        opt.zero_grad()
    assert values["tied/0.weight/use/0.weight/rows_touched"][1] < 0.9  # the input use misses rows...
    assert values["tied/0.weight/use/5.weight/rows_touched"][1] == 1.0  # ...the output use touches every one
    final = torch.load(tmp_path / "run" / "weights_final.pt", weights_only=True)["state_dict"]
    for name, value in p.items():
        torch.testing.assert_close(final[name].double(), value.detach(), rtol=1e-4, atol=1e-6)
    assert final["5.weight"].data_ptr() == final["0.weight"].data_ptr()


def test_untied_twin_starts_with_the_tied_values(tmp_path):
    tied = token_config(tmp_path, "model=tied_lm", "init=xavier", "trainer.epochs=1")
    untied = token_config(tmp_path, "model=tied_lm", "init=xavier", "trainer.epochs=1", "model.tie_embeddings=false")
    train(tied, tmp_path / "tied")
    train(untied, tmp_path / "untied")
    a = torch.load(tmp_path / "tied" / "weights_init.pt", weights_only=True)
    b = torch.load(tmp_path / "untied" / "weights_init.pt", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["tie_manifest"] == {"0.weight": ["0.weight", "5.weight"]} and b["tie_manifest"] == {}
    trained = torch.load(tmp_path / "untied" / "weights_final.pt", weights_only=True)["state_dict"]
    assert not torch.equal(trained["0.weight"], trained["5.weight"])  # two matrices, trained apart


def test_scaling_the_input_use_scales_its_logged_gradient(tmp_path):
    """+model.grad_scale={0.weight:10}: the input use's logged gradient is 10x what it is unscaled at
    step 1 (same initial weights, same batch); the output use's is unchanged."""
    runs = {}
    for name, extra in (("plain", []), ("scaled", ["+model.grad_scale={0.weight:10}"])):
        cfg = token_config(tmp_path, "model=tied_lm", "trainer.epochs=1", *extra)
        train(cfg, tmp_path / name)
        runs[name] = logged(tmp_path / name)
    use = "tied/0.weight/use/{}/grad_norm"
    assert runs["scaled"][use.format("0.weight")][1] == pytest.approx(10 * runs["plain"][use.format("0.weight")][1],
                                                                     rel=1e-5)
    assert runs["scaled"][use.format("5.weight")][1] == pytest.approx(runs["plain"][use.format("5.weight")][1], rel=1e-6)


def test_rnn_logs_a_use_per_time_step_and_ppl(tmp_path):
    cfg = token_config(tmp_path, "model=rnn", "init=recurrent", "trainer.epochs=2", "telemetry.tied.every=1",
                       context=5)
    train(cfg, tmp_path / "run")
    values = logged(tmp_path / "run")
    uses = {f"tied/1.t0.weight_hh/use/1.t{t}.weight_hh/grad_norm" for t in range(5)}
    assert uses <= set(values)
    for step in (1, 2):
        assert sum(values[u][step] ** 2 for u in uses) > 0
    assert values["ppl/val"][2] == pytest.approx(torch.tensor(values["loss/val"][2]).exp().item(), rel=1e-5)
    assert 0.0 <= values["acc/val"][2] <= 1.0


def test_shared_depth_block_is_one_module_used_at_every_depth(tmp_path):
    cfg = compose_config(["model=shared_depth", "model.depth=3", "data=digits", "trainer.epochs=1",
                          "telemetry.tied.every=1"])
    train(cfg, tmp_path / "run")
    values = logged(tmp_path / "run")
    assert {f"tied/1.inner.weight/use/{d}.inner.weight/grad_norm" for d in (1, 2, 3)} <= set(values)
    manifest = torch.load(tmp_path / "run" / "weights_final.pt", weights_only=True)["tie_manifest"]
    assert manifest["1.outer.bias"] == ["1.outer.bias", "2.outer.bias", "3.outer.bias"]


def test_finding_the_output_use_dominates_a_tied_embedding_at_first(tmp_path):
    """experiment=weight_tying (tied_lm on zipf_text, Xavier): at the first logged step the output
    use's gradient is more than twice the input use's (2.4-3.3x over seeds 0-4), because the output
    use touches every row of the vocabulary and the input use only the batch's few distinct tokens."""
    cfg = compose_config(["experiment=weight_tying", "trainer.epochs=1", "data.n_train=2000", "data.n_val=500"])
    train(cfg, tmp_path)
    values = logged(tmp_path)
    use = "tied/0.weight/use/{}.weight/{}"
    assert values[use.format(5, "grad_norm")][1] > 2 * values[use.format(0, "grad_norm")][1]
    assert values[use.format(5, "rows_touched")][1] == 1.0 and values[use.format(0, "rows_touched")][1] < 0.2


@pytest.mark.parametrize("gain, trend", [(0.5, "falls"), (2.0, "grows")])
def test_finding_gradients_vanish_or_explode_through_time(tmp_path, gain, trend):
    """experiment=bptt: at step 1 the gradient each time step's use gets (of the cell's input weights)
    falls with distance from the loss for recurrent gain 0.5 (more than 10x over the 8 steps) and
    grows for gain 2 (more than 3x)."""
    cfg = compose_config(["experiment=bptt", f"init.gain={gain}", "trainer.epochs=1", "data.n_train=1000",
                          "data.n_val=200"])
    train(cfg, tmp_path)
    values = logged(tmp_path)
    by_distance = [values[f"tied/1.t0.weight_ih/use/1.t{7 - d}.weight_ih/grad_norm"][1] for d in range(8)]
    if trend == "falls":
        assert all(a > b for a, b in zip(by_distance, by_distance[1:])) and by_distance[0] > 10 * by_distance[-1]
    else:
        assert by_distance[-1] > 3 * by_distance[0]
