"""Token data for the next_token task: the Zipfian synthetic language, any text file, The Time Machine."""

import hashlib
import http.server
import math
import re
import socket
import threading
from functools import partial

import pytest
import torch
from torch.special import xlogy

from conftest import read_events
from experiments.config import compose_config
from experiments.data import load_data, time_machine
from experiments.data.windows import windows
from experiments.data.zipf_text import language
from experiments.errors import ConfigError, DataError
from experiments.experiment import build_experiment
from experiments.training import train


def zipf(overrides=(), seed=0):
    cfg = compose_config(["data=zipf_text", *overrides]).data
    return cfg, load_data(cfg, seed)


def entropy(p):
    return float(-xlogy(p, p).sum(-1)) if p.dim() == 1 else -xlogy(p, p).sum(-1)


def stream_of(x, y):
    """The token stream that contiguous windows were cut from."""
    return torch.cat([x[0], y])


def test_zipf_text_is_identical_for_one_seed_and_differs_for_another():
    cfg, a = zipf()
    b, c = load_data(cfg, 0), load_data(cfg, 1)
    for name in ("train_x", "train_y", "val_x", "val_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.train_y, c.train_y)
    assert not torch.equal(language(cfg, 0).cols, language(cfg, 1).cols)  # another language, not only another text


def test_zipf_text_shapes_and_windows_line_up_with_the_stream():
    cfg, data = zipf(["data.n_train=500", "data.n_val=100", "data.context=5"])
    assert data.task == "next_token" and data.num_outputs == cfg.vocab == 1000
    assert data.train_x.shape == (500, 5) and data.train_y.shape == (500,)
    assert data.val_x.shape == (100, 5) and data.val_y.shape == (100,)
    for x, y in ((data.train_x, data.train_y), (data.val_x, data.val_y)):
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x[1:, :-1], x[:-1, 1:]) and torch.equal(y[:-1], x[1:, -1])
        assert 0 <= x.min() and x.max() < 1000
    x, y = windows(torch.arange(10), 3, "test")
    assert x.tolist()[0] == [0, 1, 2] and x.tolist()[-1] == [6, 7, 8] and y.tolist() == list(range(3, 10))


def test_zipf_generator_is_zipf_stationary_and_its_entropies_are_right():
    """Independently: the unigram is Zipf's law, which the chain keeps stationary (π P = π); rare tokens have
    ``successors`` table entries; both entropies equal a dense computation, the floor well below the unigram."""
    cfg = compose_config(["data=zipf_text"]).data
    lang = language(cfg, 0)
    k = torch.arange(1, cfg.vocab + 1, dtype=torch.float64)
    pi = k ** -cfg.exponent / (k ** -cfg.exponent).sum()
    torch.testing.assert_close(lang.unigram, pi)
    P = lang.transition()
    torch.testing.assert_close(P.sum(1), torch.ones(cfg.vocab, dtype=torch.float64))
    torch.testing.assert_close(pi @ P, pi, rtol=0, atol=1e-12)
    entries = torch.bincount(lang.rows, minlength=cfg.vocab)
    assert entries[-500:].median() == cfg.successors  # a rare token: one successor per coupling
    assert entries[:20].double().mean() > 10 * cfg.successors  # a frequent one spreads over many
    assert lang.unigram_entropy == pytest.approx(entropy(pi), rel=1e-12)
    assert lang.entropy_rate == pytest.approx(float((pi * entropy(P)).sum()), rel=1e-9)
    assert lang.entropy_rate < 0.7 * lang.unigram_entropy


def test_zipf_text_has_the_structure_it_claims():
    """Model-free, on the sampled text: unigram frequencies follow the Zipf law; the generator's
    cross-entropy on the validation text is its entropy rate; and bigram counts of the training text
    predict the validation text far better than unigram counts do (held out: a plug-in conditional
    entropy of 1,000 contexts from 20k tokens would be biased low even for structureless text)."""
    cfg, data = zipf()
    lang = language(cfg, 0)
    train, val = stream_of(data.train_x, data.train_y), stream_of(data.val_x, data.val_y)
    freq = torch.bincount(torch.cat([train, val]), minlength=cfg.vocab).double()
    assert (freq / freq.sum() - lang.unigram).abs().sum() / 2 < 0.1  # total variation from Zipf
    P = lang.transition()
    assert -P[val[:-1], val[1:]].log().mean().item() == pytest.approx(lang.entropy_rate, abs=0.1)
    V = cfg.vocab
    counts = torch.zeros(V, V, dtype=torch.float64).index_put_((train[:-1], train[1:]),
                                                               torch.ones(len(train) - 1, dtype=torch.float64),
                                                               accumulate=True)
    uni = (counts.sum(0) + 0.5) / (counts.sum() + 0.5 * V)
    bigram = (counts + 5 * uni) / (counts.sum(1, keepdim=True) + 5)
    unigram_ce = -uni[val[1:]].log().mean().item()
    bigram_ce = -bigram[val[:-1], val[1:]].log().mean().item()
    assert unigram_ce == pytest.approx(lang.unigram_entropy, abs=0.15)
    assert bigram_ce < unigram_ce - 0.8


def test_zipf_text_logs_the_reachable_loss(caplog):
    cfg = compose_config(["data=zipf_text"]).data
    with caplog.at_level("INFO", logger="experiments.data.zipf_text"):
        load_data(cfg, 0)
    lang = language(cfg, 0)
    message = " ".join(r.getMessage() for r in caplog.records)
    for h in (lang.unigram_entropy, lang.entropy_rate):
        assert f"{h:.3f} nats (perplexity {math.exp(h):.1f})" in message


def test_zipf_text_feeds_the_language_models():
    """num_outputs: null in the YAML becomes the vocabulary before the model is built."""
    cfg = compose_config(["data=zipf_text", "data.vocab=50", "data.n_train=64", "data.n_val=16", "model=tied_lm"])
    assert cfg.data.num_outputs is None
    exp = build_experiment(cfg)
    assert cfg.data.num_outputs == 50 and cfg.model.out_features == 50
    assert exp.model(exp.data.val_x).shape == (16, 50)


@pytest.mark.parametrize("override, key", [
    ("data.context=0", "data.context=0"), ("data.vocab=1", "data.vocab=1"), ("data.successors=0", "data.successors"),
    ("data.structure=1.5", "data.structure"), ("data.exponent=-1", "data.exponent"), ("data.n_val=0", "data.n_val"),
])
def test_zipf_text_bad_keys_are_named(override, key):
    with pytest.raises(ConfigError, match=key):
        zipf([override])


BOOK = "The cat sat. The cat ran!\nA dog sat; the dog-cat ran 42 times.\nThe end"


def text_data(tmp_path, *overrides, text=BOOK):
    path = tmp_path / "book.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return load_data(compose_config(["data=text", f"data.path={path}", *overrides]).data, 0)


def test_text_word_tokens_vocabulary_and_unk(tmp_path):
    # words: the cat sat the cat ran a dog sat the dog cat ran | times the end   (last 3 of 16: validation)
    data = text_data(tmp_path, "data.tokens=word", "data.min_freq=2", "data.context=2", "data.val_fraction=0.1875")
    # training counts: the 3, cat 3, sat 2, ran 2, dog 2; a 1 (rare); times, end only in validation
    vocab = ["<unk>", "cat", "the", "dog", "ran", "sat"]
    ids = {w: i for i, w in enumerate(vocab)}
    words = "the cat sat the cat ran a dog sat the dog cat ran times the end".split()
    expected = torch.tensor([ids.get(w, 0) for w in words])
    assert data.num_outputs == len(vocab)
    assert torch.equal(stream_of(data.train_x, data.train_y), expected[:13])
    assert expected[6] == 0  # "a": rare
    assert stream_of(data.val_x, data.val_y).tolist() == [0, ids["the"], 0]  # times, the, end
    assert data.train_x.shape == (11, 2) and data.train_x.dtype == torch.int64


def test_text_char_tokens_as_in_the_book(tmp_path):
    data = text_data(tmp_path, "data.context=2", "data.val_fraction=0.3", text="Ab, ba!\n\nAB 7 ab")
    # lower case, every run of non-letters to one space: "ab ba ab ab", 11 characters; the last 3 validate.
    # Training counts: a 3, b 3, space 2 -> vocabulary <unk>, a, b, " "
    ids = {"<unk>": 0, "a": 1, "b": 2, " ": 3}
    stream = [ids[c] for c in "ab ba ab ab"]
    assert data.num_outputs == 4
    assert stream_of(data.train_x, data.train_y).tolist() == stream[:8]
    assert stream_of(data.val_x, data.val_y).tolist() == stream[8:]
    assert data.train_x.tolist() == [stream[i:i + 2] for i in range(6)] and data.train_y.tolist() == stream[2:8]


@pytest.mark.parametrize("text, overrides, error, message", [
    (None, [], ConfigError, "data.path=.*no such file"),
    ("", [], DataError, "book.txt: the file is empty"),
    (b"caf\xe9 latin-1", [], DataError, r"book.txt: not UTF-8 text \(byte 3"),
    ("1234 !!", [], DataError, "book.txt: the text has no letters"),
    ("a b c d e f", ["data.tokens=word", "data.context=8"], DataError,
     r"book.txt \(6 word tokens\): the training part has 5 tokens, fewer than one window of data.context=8"),
    ("a b c d e f g h i j", ["data.tokens=word", "data.context=1"], DataError,
     r"validation part \(data.val_fraction=0.1\) has 1 tokens.*data.context=1"),
    (BOOK, ["data.context=0"], ConfigError, "data.context=0"),
    (BOOK, ["data.min_freq=0"], ConfigError, "data.min_freq=0"),
    (BOOK, ["data.tokens=bpe"], ConfigError, "data.tokens='bpe'"),
    (BOOK, ["data.val_fraction=1.0"], ConfigError, "data.val_fraction=1.0"),
])
def test_text_bad_input_names_the_key_or_file(tmp_path, text, overrides, error, message):
    if text is None:
        with pytest.raises(error, match=message):
            load_data(compose_config(["data=text", f"data.path={tmp_path / 'none.txt'}"]).data, 0)
        return
    with pytest.raises(error, match=message):
        text_data(tmp_path, *overrides, text=text)


def test_text_trains_a_language_model_end_to_end(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(BOOK * 20)
    cfg = compose_config(["data=text", f"data.path={path}", "data.context=4", "model=tied_lm", "model.width=8",
                          "model.hidden=16", "data.batch_size=256", "trainer.epochs=2", "optim=adam", "optim.lr=0.03",
                          "telemetry=off"])
    train(cfg, tmp_path / "run")
    acc = read_events(tmp_path / "run")
    loss, ppl = acc.Scalars("loss/val")[-1].value, acc.Scalars("ppl/val")[-1].value
    assert ppl == pytest.approx(math.exp(loss), rel=1e-4) and loss < math.log(cfg.data.num_outputs)


FAKE = "The Time Machine, by H. G. Wells\n\nThe Time Traveller (for so it will be convenient to speak of him)\n" * 5


@pytest.fixture
def book_server(tmp_path, monkeypatch):
    """The book's data server on 127.0.0.1, serving a small fake timemachine.txt with its SHA-1."""
    served = tmp_path / "served"
    served.mkdir()
    (served / time_machine.FILE).write_text(FAKE)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setattr(time_machine, "DATA_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setattr(time_machine, "SHA1", hashlib.sha1(FAKE.encode()).hexdigest())
    yield server
    server.shutdown()
    server.server_close()


def time_machine_cfg(root, *overrides):
    return compose_config(["data=time_machine", f"data.root={root}", *overrides]).data


def test_time_machine_downloads_checks_and_caches(tmp_path, book_server):
    root = tmp_path / "root"
    data = load_data(time_machine_cfg(root, "data.download=true"), 0)
    assert (root / "timemachine.txt").read_text() == FAKE and sorted(p.name for p in root.iterdir()) == [
        "timemachine.txt"]
    letters = sorted(set("".join(c for c in FAKE.lower() if c.isalpha())))
    assert data.num_outputs == len(letters) + 2  # <unk>, the space, the letters
    book_server.shutdown()  # cached: no server needed any more
    again = load_data(time_machine_cfg(root), 0)
    assert torch.equal(again.train_x, data.train_x)
    words = load_data(time_machine_cfg(root, "data.tokens=word", "data.context=3"), 0)
    assert words.num_outputs == 1 + len(set(re.findall("[a-z]+", FAKE.lower())))


def test_time_machine_wrong_checksum_keeps_nothing(tmp_path, book_server, monkeypatch):
    monkeypatch.setattr(time_machine, "SHA1", "0" * 40)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="data=time_machine: data.download.*does not match its SHA1"):
        load_data(time_machine_cfg(root, "data.download=true"), 0)
    assert not root.exists() or list(root.iterdir()) == []


def test_time_machine_without_network_names_the_flag(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: connection refused, as with no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(time_machine, "DATA_URL", f"http://127.0.0.1:{port}/")
    root = tmp_path / "root"
    with pytest.raises(DataError, match=f"data.download.*127.0.0.1:{port}.*copy timemachine.txt .* into "
                                        f"data.root={root} yourself and leave out data.download=true"):
        load_data(time_machine_cfg(root, "data.download=true"), 0)
    assert not (root / "timemachine.txt").exists() and not (root / "timemachine.txt.part").exists()


def test_time_machine_missing_file_names_the_flag_and_the_folder(tmp_path):
    with pytest.raises(DataError, match=f"data.root={tmp_path / 'nothing'}: no timemachine.txt there. Add "
                                        "data.download=true"):
        load_data(time_machine_cfg(tmp_path / "nothing"), 0)
    assert not (tmp_path / "nothing").exists()  # nothing fetched, nothing made
