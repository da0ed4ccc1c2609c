import gzip

import numpy as np
import pytest

from nestemb.data.idx import load_idx, write_idx, write_synthetic_idx
from nestemb.data.paths import resolve_fashion_mnist
from nestemb.errors import NestembError


def test_roundtrip_gz_and_raw(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (7, 5, 4), dtype=np.uint8)
    y = np.arange(7, dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)  # raw labels next to gzipped images
    xi, yi = load_idx(tmp_path, "train")
    np.testing.assert_array_equal(xi, x)
    np.testing.assert_array_equal(yi, y)
    assert xi.dtype == np.uint8 and yi.dtype == np.int64


def test_truncated_gzip(tmp_path):
    d = write_synthetic_idx(tmp_path, n_train=30, n_test=10)
    p = d / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(NestembError, match="train-images-idx3-ubyte.gz.*truncated or corrupt"):
        load_idx(d, "train")


def test_corrupt_gzip(tmp_path):
    d = write_synthetic_idx(tmp_path, n_train=30, n_test=10)
    p = d / "train-labels-idx1-ubyte.gz"
    raw = bytearray(p.read_bytes())
    raw[12:20] = b"\xff" * 8
    p.write_bytes(bytes(raw))
    with pytest.raises(NestembError, match="train-labels-idx1-ubyte.gz"):
        load_idx(d, "train")


def test_wrong_magic_and_size(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((3, 2, 2), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((3, 2, 2), np.uint8))  # images!
    with pytest.raises(NestembError, match="magic number 2051, expected 2049"):
        load_idx(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(NestembError, match="3 images but .* 4 labels"):
        load_idx(tmp_path)
    # header says 3 images but the data holds fewer bytes (truncated, not a gzip error)
    raw = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-3]))
    with pytest.raises(NestembError, match="header says 12"):
        load_idx(tmp_path)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(NestembError, match="data folder not found"):
        load_idx(tmp_path / "nope")
    with pytest.raises(NestembError, match="no t10k-images-idx3-ubyte"):
        load_idx(tmp_path, "t10k")


def test_resolve_order(tmp_path, monkeypatch):
    a = write_synthetic_idx(tmp_path / "a", 20, 10)
    b = write_synthetic_idx(tmp_path / "b", 20, 10)
    monkeypatch.setenv("NESTEMB_DATA", str(b))
    assert resolve_fashion_mnist(a) == a  # explicit argument first
    assert resolve_fashion_mnist() == b  # then $NESTEMB_DATA
    with pytest.raises(NestembError, match="holds no IDX pair"):
        resolve_fashion_mnist(tmp_path)
    monkeypatch.setenv("NESTEMB_DATA", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)  # ../shared/data/fashion-mnist does not exist from here
    import nestemb.data.paths as paths

    monkeypatch.setattr(paths, "SEARCH_PATHS", ("../shared/data/fashion-mnist", str(tmp_path / "none")))
    with pytest.raises(NestembError, match="tried .*empty, ../shared/data/fashion-mnist, .*none"):
        resolve_fashion_mnist()
    shared = tmp_path / "x" / "shared" / "data" / "fashion-mnist"
    write_synthetic_idx(shared, 20, 10)
    (tmp_path / "x" / "main").mkdir()
    monkeypatch.chdir(tmp_path / "x" / "main")
    assert resolve_fashion_mnist().resolve() == shared.resolve()  # relative to the CWD


def test_real_fashion_mnist_smoke(shared_data):
    folder = shared_data / "fashion-mnist"
    if not folder.is_dir():
        pytest.skip("no Fashion-MNIST in the shared data")
    x, y = load_idx(folder, "t10k")
    assert x.shape == (10000, 28, 28) and np.bincount(y).tolist() == [1000] * 10
    assert abs(load_idx(folder, "train")[0].mean() - 72.94) < 0.01
