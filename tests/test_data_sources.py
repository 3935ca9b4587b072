"""Real datasets: digits, Fashion-MNIST's IDX files (written by the test), and CSV tables."""

import gzip
import hashlib
import http.server
import struct
import threading
import time
from functools import partial

import numpy as np
import pytest
import torch

from conftest import read_events, run_cli
from experiments.errors import ConfigError, DataError, Diverged
from experiments.data import load_data
from experiments.training import train
from experiments.data.fashion_mnist import FILES, IDXError, download, read_idx


def write_idx(path, array: np.ndarray, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(">u1" if type_code == 0x08 else ">i4").tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_idx_reader_reads_what_was_written(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "img.gz", images)
    assert np.array_equal(read_idx(tmp_path / "img.gz"), images)
    ints = np.array([[1, -2], [300000, 4]], dtype=np.int32)
    write_idx(tmp_path / "ints", ints, type_code=0x0C)
    assert np.array_equal(read_idx(tmp_path / "ints"), ints)


@pytest.mark.parametrize("corrupt, message", [
    (lambda raw: b"\x01\x02" + raw[2:], "bad magic number"),
    (lambda raw: raw[:6], "ends at byte 6"),
    (lambda raw: raw[:-5], "truncated or corrupted"),
])
def test_corrupted_idx_is_a_clear_error(tmp_path, corrupt, message):
    path = tmp_path / "labels"
    write_idx(path, np.arange(10, dtype=np.uint8))
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(IDXError, match=message):
        read_idx(path)


def fashion_files(root, n_train=12, n_test=5):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(root / name, array)
    return arrays


def test_fashion_mnist_from_idx_files(tmp_path, make_cfg):
    arrays = fashion_files(tmp_path / "fm")
    data = load_data(make_cfg(["data=fashion_mnist", f"data.root={tmp_path / 'fm'}"]).data, 0)
    assert data.train_x.shape == (12, 784) and data.val_x.shape == (5, 784)
    torch.testing.assert_close(data.train_x[3], torch.tensor(arrays["train-images-idx3-ubyte.gz"][3].reshape(-1) / 255.0,
                                                             dtype=torch.float32))
    assert data.train_y.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()
    assert data.train_y.dtype == torch.int64 and data.num_outputs == 10
    assert 0.0 <= data.train_x.min() and data.train_x.max() <= 1.0
    with pytest.raises(ConfigError, match="missing train-images-idx3-ubyte.gz.*data.download=true"):
        load_data(make_cfg(["data=fashion_mnist", f"data.root={tmp_path / 'empty'}"]).data, 0)


def test_csv_without_a_target_names_the_missing_key(tmp_path, make_cfg):
    path = write_csv(tmp_path / "t.csv", REGRESSION)
    with pytest.raises(ConfigError, match="data=csv needs data.target: give data.target=..."):
        load_data(make_cfg(["data=csv", f"data.path={path}"]).data, 0)


@pytest.mark.parametrize("change, message", [
    ({"train-labels-idx1-ubyte.gz": np.zeros(11, dtype=np.uint8)}, "holds 12 images but train-labels-idx1-ubyte.gz holds 11"),
    ({"t10k-labels-idx1-ubyte.gz": np.array([1, 2, 10, 3, 4], dtype=np.uint8)}, "holds label 10 at index 2"),
    ({"t10k-images-idx3-ubyte.gz": b"plain bytes, not gzip"}, "not a complete gzip file"),
])
def test_fashion_mnist_files_that_do_not_belong_together(tmp_path, make_cfg, change, message):
    fashion_files(tmp_path)
    for name, content in change.items():
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            write_idx(tmp_path / name, content)
    with pytest.raises(DataError, match=message):
        load_data(make_cfg(["data=fashion_mnist", f"data.root={tmp_path}"]).data, 0)


def test_download_verifies_checksums_over_loopback(tmp_path, caplog):
    served = tmp_path / "served"
    arrays = fashion_files(served)
    sums = {name: hashlib.md5((served / name).read_bytes()).hexdigest() for name in arrays}
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with caplog.at_level("INFO", logger="experiments.data.download"):
            download(tmp_path / "root", url, sums)
        assert sorted(p.name for p in (tmp_path / "root").iterdir()) == sorted(FILES)
        assert any("100%" in r.getMessage() for r in caplog.records)  # progress lines
        bad = {**sums, "t10k-labels-idx1-ubyte.gz": "0" * 32}
        (tmp_path / "root" / "t10k-labels-idx1-ubyte.gz").unlink()
        with pytest.raises(DataError, match="does not match its MD5"):
            download(tmp_path / "root", url, bad)
        assert not (tmp_path / "root" / "t10k-labels-idx1-ubyte.gz").exists()  # nothing corrupt is kept
    finally:
        server.shutdown()


class Misbehaving(http.server.BaseHTTPRequestHandler):
    """/missing: 404; /stall: 10 bytes of 1000, then nothing; /drip: a byte every 0.2 s."""

    stop = threading.Event()

    def do_GET(self):
        if self.path.startswith("/missing"):
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            if self.path.startswith("/stall"):
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                self.stop.wait(10)
            else:
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    if self.stop.wait(0.2):
                        break
        except OSError:  # the client gave up
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def misbehaving_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    Misbehaving.stop.set()
    server.shutdown()


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("path, message", [
    ("/missing/f.gz", "the server answered HTTP 404 Not Found"),
    ("/stall/f.gz", "no data for 0.5 s: the server or the network stalled"),
    ("/drip/f.gz", "not finished within the deadline of 1.5 s"),
    (None, "cannot reach the server"),
])
def test_a_download_that_cannot_finish_fails_in_time_and_leaves_nothing(misbehaving_server, tmp_path, path, message):
    from experiments.data.download import fetch

    url = misbehaving_server + path if path else f"http://127.0.0.1:{closed_port()}/f.gz"
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        fetch(url, tmp_path / "f.gz", "0" * 32, timeout=0.5, deadline=1.5, avoid="put the file there yourself")
    assert time.monotonic() - started < 3  # the drip alone would take 200 s
    assert f"data.download: {url}: {message}" in str(caught.value) and "put the file there yourself" in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # no .part left behind


def test_a_failed_download_is_one_paragraph_and_failure_txt(misbehaving_server, tmp_path):
    from experiments.config import compose_config
    from experiments.failures import run_and_report
    from experiments.training import train

    cfg = compose_config(["data=fashion_mnist", "data.download=true", f"data.root={tmp_path / 'data'}",
                          f"data.url={misbehaving_server}/missing/"])
    with pytest.raises(SystemExit):
        run_and_report(train, cfg, tmp_path / "run", {}, multirun=False)
    reason = (tmp_path / "run" / "failure.txt").read_text()
    assert f"{misbehaving_server}/missing/train-images-idx3-ubyte.gz: the server answered HTTP 404" in reason
    assert "data.download=false" in reason and not list((tmp_path / "data").iterdir())


def write_csv(path, text):
    path.write_text(text)
    return path


REGRESSION = "a,b,y\n" + "".join(f"{i},{2 * i + 1},{3 * i}\n" for i in range(20))


def test_csv_regression_standardizes_with_training_rows(tmp_path, make_cfg):
    path = write_csv(tmp_path / "t.csv", REGRESSION)
    data = load_data(make_cfg(["data=csv", f"data.path={path}", "data.target=y"]).data, seed=0)
    assert data.train_x.shape == (16, 2) and data.val_x.shape == (4, 2) and data.num_outputs == 1
    torch.testing.assert_close(data.train_x.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.train_x.std(0), torch.ones(2))
    # The target too, and in_target_units gives the file's values back.
    torch.testing.assert_close(data.train_y.mean(0), torch.zeros(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.train_y.std(0), torch.ones(1))
    raw_train_y, raw_val_y = data.in_target_units(data.train_y), data.in_target_units(data.val_y)
    assert sorted((raw_train_y.flatten() / 3).round().int().tolist() + (raw_val_y.flatten() / 3).round().int().tolist()) \
        == list(range(20))
    # Undo the features' standardization with the training rows' statistics: the raw values come back.
    raw_train = raw_train_y / 3  # a = y / 3 for every row
    a_mean, a_std = raw_train.mean(), raw_train.std()
    torch.testing.assert_close(data.val_x[:, 0] * a_std + a_mean, raw_val_y[:, 0] / 3, rtol=1e-4, atol=1e-4)
    raw = load_data(make_cfg(["data=csv", f"data.path={path}", "data.target=y", "data.standardize_target=false"]).data, 0)
    torch.testing.assert_close(raw.val_y, raw_val_y)
    assert raw.target_std is None and raw.in_target_units(raw.val_y) is raw.val_y
    data_b = load_data(make_cfg(["data=csv", f"data.path={path}", "data.target=y", "data.features=[b]"]).data, 0)
    assert data_b.train_x.shape == (16, 1)


def write_houses(path, rows=500):
    """A realistic house-price table: prices (in thousands) around 500, spread about 140."""
    rng = np.random.default_rng(0)
    sqft, bedrooms, bathrooms = rng.uniform(700, 3500, rows), rng.integers(1, 6, rows), rng.integers(1, 4, rows)
    age, distance = rng.uniform(0, 80, rows), rng.uniform(1, 40, rows)
    price = 200 + 0.16 * sqft + 12 * bedrooms + 15 * bathrooms - 1.1 * age - 3.0 * distance + rng.normal(0, 25, rows)
    lines = ["sqft,bedrooms,bathrooms,age,distance_km,price"] + [
        f"{s:.0f},{b},{ba},{a:.0f},{d:.1f},{p:.1f}" for s, b, ba, a, d, p in zip(sqft, bedrooms, bathrooms, age,
                                                                               distance, price)]
    return write_csv(path, "\n".join(lines) + "\n"), price


def test_readme_house_price_example_converges_at_the_default_lr(tmp_path, make_cfg):
    """``python train.py data=csv data.path=houses.csv data.target=price`` (the docs' example, default
    model and lr): the standardized target trains; the raw target (the old behaviour) diverges."""
    path, price = write_houses(tmp_path / "houses.csv")
    assert 450 < price.mean() < 550 and price.std() > 100
    readme = ["data=csv", f"data.path={path}", "data.target=price"]
    val_loss = train(make_cfg(readme), tmp_path / "run")
    assert val_loss < 0.15  # standardized units: predicting the mean scores 1; the noise floor is about 0.03
    # The documented relation: loss x std^2 is the MSE of the predictions in the target's own units (prices).
    cfg = make_cfg(readme)
    data = load_data(cfg.data, cfg.trainer.seed)
    model = torch.load(tmp_path / "run" / "weights_final.pt", weights_only=True)["state_dict"]
    hidden = torch.relu(data.val_x @ model["0.weight"].T + model["0.bias"])
    prediction = data.in_target_units(hidden @ model["2.weight"].T + model["2.bias"])
    raw_val = data.in_target_units(data.val_y)
    mse_in_prices = ((prediction - raw_val) ** 2).mean().item()
    assert mse_in_prices == pytest.approx(val_loss * data.target_std.item() ** 2, rel=1e-3)
    with pytest.raises(Diverged, match="diverged at step"):
        train(make_cfg([*readme, "data.standardize_target=false"]), tmp_path / "raw")


def test_csv_classification_with_named_classes(tmp_path, make_cfg):
    rows = "".join(f"{i},{i % 3},{['cat', 'dog', 'emu'][i % 3]}\n" for i in range(30))
    path = write_csv(tmp_path / "c.csv", "x1,x2,label\n" + rows)
    cfg = make_cfg(["data=csv", f"data.path={path}", "data.target=label", "data.task=classification"])
    data = load_data(cfg.data, 0)
    assert data.num_outputs == 3 and data.train_y.dtype == torch.int64
    assert sorted(set(data.train_y.tolist()) | set(data.val_y.tolist())) == [0, 1, 2]


@pytest.mark.parametrize("text, overrides, message", [
    (None, [], "no such file"),
    (REGRESSION, ["data.target=price"], "data.target='price': no such column.*Columns: a, b, y"),
    (REGRESSION, ["data.features=[a,zz]"], "no column 'zz'"),
    ("a,y\n1,2\n3,oops\n5,6\n", [], "row 3, column 'y' holds 'oops'"),
    ("a,y\n1,2\nx,4\n5,6\n", [], "row 3, column 'a' holds 'x'"),
    ("a,y\n1,2\n3\n5,6\n", [], "row 3 has 1 fields"),
    ("a,y\n1,2\n3,4\nnan,6\n", [], "row 4, column 'a' holds 'nan', which is not a finite number"),
    ("a,y\n1,2\n3,-inf\n5,6\n", [], "row 3, column 'y' holds '-inf', which is not a finite number"),
    ("a,a,y\n1,2,3\n3,4,5\n5,6,7\n", [], "the header names 'a' more than once"),
    ("a,y\n1,cat\n3,cat\n5,cat\n", ["data.task=classification"], "target column 'y' holds one class only"),
])
def test_csv_bad_input_names_file_column_row(tmp_path, make_cfg, text, overrides, message):
    path = tmp_path / "bad.csv"
    if text is not None:
        write_csv(path, text)
    cfg = make_cfg(["data=csv", f"data.path={path}", "data.target=y", *overrides])
    with pytest.raises((ConfigError, DataError), match=message):  # a wrong key, or the file's content
        load_data(cfg.data, 0)


def test_digits_reaches_well_above_chance(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["data=digits", "model=mlp", "model.width=32", "optim=adam", "optim.lr=0.01",
                      "trainer.epochs=5", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr
    acc = read_events(run_dir)
    assert acc.Scalars("acc/val")[-1].value > 0.85
    assert {"acc/train", "loss/train"} <= set(acc.Tags()["scalars"])
    final = torch.load(run_dir / "weights_final.pt", weights_only=True)["state_dict"]
    assert final["2.weight"].shape == (10, 32)  # the last layer's width came from the data


@pytest.mark.slow  # (over 8 s: the default suite stays under 5 minutes; .ci/run runs it)
def test_digits_nested_writes_acc_val(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["data=digits", "model=nested", "trainer.epochs=1", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr
    values = read_events(run_dir).Scalars("acc/val")
    assert len(values) == 1 and 0.0 <= values[0].value <= 1.0
