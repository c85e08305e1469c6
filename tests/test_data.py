"""fastconv.data: loaders on small files written here, clear errors for missing or
malformed files, and the real files in ../shared/data when present."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from fastconv import data

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def idx_bytes(array, magic_type=0x08):
    array = np.asarray(array, np.uint8)
    header = struct.pack(">BBBB", 0, 0, magic_type, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_mnist(folder, images, labels, compress=True, kind="t10k"):
    folder.mkdir(exist_ok=True)
    for stem, arr in ((f"{kind}-images-idx3-ubyte", images), (f"{kind}-labels-idx1-ubyte", labels)):
        raw = arr if isinstance(arr, bytes) else idx_bytes(arr)
        if compress:
            with gzip.open(folder / (stem + ".gz"), "wb") as f:
                f.write(raw)
        else:
            (folder / stem).write_bytes(raw)


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_small(tmp_path, compress):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    labels = np.array([7, 0, 9])
    write_mnist(tmp_path / "m", images, labels, compress)
    X, y = data.load_mnist(tmp_path / "m")
    assert X.shape == (3, 1, 28, 28) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.dtype == np.int64 and list(y) == [7, 0, 9]
    np.testing.assert_allclose(X[:, 0] * 255, images, atol=1e-4)
    assert X.min() >= 0 and X.max() <= 1


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        data.load_mnist(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz not found"):
        data.load_mnist(tmp_path / "empty")
    images, labels = np.zeros((3, 4, 4)), np.zeros(3)
    # wrong magic: labels file carries an images header
    write_mnist(tmp_path / "a", images, idx_bytes(np.zeros((3, 4, 4))))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: IDX magic number "
                                         r"0x00000803 says 3 dimensions, expected 1"):
        data.load_mnist(tmp_path / "a")
    # not unsigned bytes
    write_mnist(tmp_path / "b", idx_bytes(images, magic_type=0x0D), labels)
    with pytest.raises(ValueError, match="bad IDX magic number 0x00000d03"):
        data.load_mnist(tmp_path / "b")
    # truncated data
    write_mnist(tmp_path / "c", idx_bytes(images)[:-5], labels)
    with pytest.raises(ValueError, match=r"header says shape \(3, 4, 4\) \(48 bytes of data\), "
                                         r"but the file holds 43"):
        data.load_mnist(tmp_path / "c")
    # count mismatch
    write_mnist(tmp_path / "d", images, np.zeros(2))
    with pytest.raises(ValueError, match="holds 3 images but .* holds 2 labels"):
        data.load_mnist(tmp_path / "d")
    # not gzip
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "t10k-images-idx3-ubyte.gz").write_bytes(b"plain bytes, not gzip")
    (tmp_path / "e" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"plain bytes, not gzip")
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: cannot read"):
        data.load_mnist(tmp_path / "e")


def write_medmnist(path, n=(5, 3, 4), shape=(28, 28), labels_2d=True, drop=None):
    arrays = {}
    rng = np.random.default_rng(0)
    for split, k in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, (k,) + shape, dtype=np.uint8)
        lab = rng.integers(0, 2, (k, 1) if labels_2d else (k,), dtype=np.uint8)
        arrays[f"{split}_labels"] = lab
    if drop:
        del arrays[drop]
    np.savez(path, **arrays)
    return arrays


def test_load_medmnist_small(tmp_path):
    arrays = write_medmnist(tmp_path / "p.npz")
    X, y = data.load_medmnist(tmp_path / "p.npz", "val")
    assert X.shape == (3, 1, 28, 28) and X.dtype == np.float32 and y.shape == (3,)
    assert y.dtype == np.int64
    np.testing.assert_allclose(X[:, 0] * 255, arrays["val_images"], atol=1e-4)
    every = data.load_medmnist(tmp_path / "p.npz", split=None)
    assert [len(every[s][0]) for s in ("train", "val", "test")] == [5, 3, 4]


def test_load_medmnist_rgb(tmp_path):
    write_medmnist(tmp_path / "rgb.npz", shape=(28, 28, 3))
    X, _ = data.load_medmnist(tmp_path / "rgb.npz", "test")
    assert X.shape == (4, 3, 28, 28)


def test_load_medmnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        data.load_medmnist(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_medmnist(tmp_path / "absent.npz", "validation")
    write_medmnist(tmp_path / "nolabels.npz", drop="test_labels")
    with pytest.raises(ValueError, match="nolabels.npz has no test_labels"):
        data.load_medmnist(tmp_path / "nolabels.npz", "test")
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="junk.npz is not a readable .npz"):
        data.load_medmnist(tmp_path / "junk.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        data.load_medmnist(tmp_path / "single.npy")


def test_load_digits():
    pytest.importorskip("sklearn", reason="scikit-learn not installed: it ships the digits")
    X, y = data.load_digits()
    assert X.shape == (1797, 1, 8, 8) and X.dtype == np.float32
    assert X.min() == 0 and X.max() == 1 and y.dtype == np.int64 and set(y) == set(range(10))


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason=f"{SHARED / 'mnist'} absent")
def test_real_mnist():
    X, y = data.load_mnist(SHARED / "mnist")
    assert X.shape == (10000, 1, 28, 28) and list(y[:5]) == [7, 2, 1, 0, 4]
    assert np.bincount(y).tolist()[:2] == [980, 1135]


@pytest.mark.skipif(not (SHARED / "pneumoniamnist").is_dir(),
                    reason=f"{SHARED / 'pneumoniamnist'} absent")
def test_real_pneumoniamnist():
    d = data.load_medmnist(SHARED / "pneumoniamnist" / "pneumoniamnist.npz", split=None)
    assert np.bincount(d["test"][1]).tolist() == [234, 390]
    assert np.bincount(d["val"][1]).tolist() == [135, 389]
    assert d["train"][0].shape[1:] == (1, 28, 28)
