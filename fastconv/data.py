"""Data loaders: scikit-learn's bundled 8x8 digits (the embedded default, no
download), MNIST in its IDX ``.gz`` files, and MedMNIST ``.npz`` files.

Every loader returns images as float32 NCHW arrays scaled to [0, 1] and labels as
int64, and raises an error that names the file and says what is wrong with it.
"""
import gzip
import os
import zipfile

import numpy as np

__all__ = ["load_digits", "load_mnist", "load_medmnist", "read_idx"]

# IDX magic numbers: 0x00 0x00 <type code> <number of dimensions>; 0x08 = unsigned byte
_IDX_UBYTE = 0x08
_MNIST_FILES = {
    "images": "{kind}-images-idx3-ubyte",
    "labels": "{kind}-labels-idx1-ubyte",
}


def load_digits():
    """scikit-learn's 1,797 handwritten digits, 8x8, 17 grey levels.

    Returns
    -------
    X : float32 (1797, 1, 8, 8), scaled to [0, 1] (pixel / 16)
    y : int64 (1797,), digits 0-9
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ImportError("load_digits needs scikit-learn, which ships the 8x8 digits data: "
                          "pip install scikit-learn  (or pip install 'fastconv[test]')") from None
    d = sk_load_digits()
    X = (np.asarray(d.images, np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return np.ascontiguousarray(X), np.asarray(d.target, np.int64)


def _open(path):
    """Bytes of a file, gunzipped when it ends in .gz."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: cannot read the file ({e}); is it a valid gzip file?") from e


def read_idx(path, ndim=None):
    """Read an IDX file (``.gz`` or plain) of unsigned bytes into a uint8 array.

    The header is checked: magic number ``0x0000 08 <ndim>``, then ``ndim`` big-endian
    int32 sizes whose product must equal the number of data bytes.
    """
    path = os.fspath(path)
    raw = _open(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    zero, dtype_code, nd = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    magic = int.from_bytes(raw[:4], "big")
    if zero != 0 or dtype_code != _IDX_UBYTE:
        raise ValueError(f"{path}: bad IDX magic number 0x{magic:08x}; expected "
                         f"0x000008NN (unsigned bytes, NN dimensions)")
    if ndim is not None and nd != ndim:
        raise ValueError(f"{path}: IDX magic number 0x{magic:08x} says {nd} dimensions, "
                         f"expected {ndim} (magic 0x{0x800 + ndim:08x})")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", nd, 4))
    expected = int(np.prod(shape))
    got = len(raw) - header
    if got != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes of data), "
                         f"but the file holds {got} bytes of data")
    return np.frombuffer(raw, np.uint8, expected, header).reshape(shape)


def _find(folder, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(folder, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"load_mnist: {os.path.join(folder, stem + '.gz')} not found "
                            f"(nor the uncompressed {stem}); expected the MNIST IDX files "
                            f"in {folder!r}")


def load_mnist(directory, kind="t10k"):
    """MNIST from its IDX files ``{kind}-images-idx3-ubyte.gz`` and
    ``{kind}-labels-idx1-ubyte.gz`` (or uncompressed) in ``directory``.

    ``kind`` is ``"t10k"`` (the 10,000 test images) or ``"train"`` (60,000).

    Returns
    -------
    X : float32 (N, 1, 28, 28) in [0, 1]; y : int64 (N,)
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"load_mnist: {directory!r} is not a folder; pass the folder "
                                f"holding {kind}-images-idx3-ubyte.gz and "
                                f"{kind}-labels-idx1-ubyte.gz")
    ipath = _find(directory, _MNIST_FILES["images"].format(kind=kind))
    lpath = _find(directory, _MNIST_FILES["labels"].format(kind=kind))
    images = read_idx(ipath, ndim=3)
    labels = read_idx(lpath, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"load_mnist: {ipath} holds {images.shape[0]} images but {lpath} "
                         f"holds {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"load_mnist: {lpath} holds labels up to {labels.max()}; MNIST "
                         f"labels are 0-9")
    X = (images.astype(np.float32) / 255.0)[:, None]
    return np.ascontiguousarray(X), labels.astype(np.int64)


_MEDMNIST_SPLITS = ("train", "val", "test")


def _medmnist_split(path, f, split):
    ik, lk = f"{split}_images", f"{split}_labels"
    missing = [k for k in (ik, lk) if k not in f.files]
    if missing:
        raise ValueError(f"load_medmnist: {path} has no {' or '.join(missing)}; a MedMNIST "
                         f"file holds train_images, train_labels, val_images, val_labels, "
                         f"test_images, test_labels (found: {', '.join(sorted(f.files))})")
    images, labels = f[ik], f[lk]
    if images.ndim == 3:                                   # (N, H, W) grey
        X = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3):  # (N, H, W, C)
        X = images.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"load_medmnist: {path}: {ik} has shape {images.shape}; expected "
                         f"(N, H, W) or (N, H, W, 1|3)")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim not in (1, 2) or labels.shape[0] != images.shape[0]:
        raise ValueError(f"load_medmnist: {path}: {lk} has shape {labels.shape} for "
                         f"{images.shape[0]} images in {ik}")
    scale = 255.0 if images.dtype == np.uint8 or images.max(initial=0) > 1 else 1.0
    X = np.ascontiguousarray(X.astype(np.float32) / np.float32(scale))
    return X, labels.astype(np.int64)


def load_medmnist(path, split="train"):
    """A MedMNIST ``.npz`` file (e.g. ``pneumoniamnist.npz``).

    Parameters
    ----------
    path : the .npz file, with keys train_images, train_labels, val_images, val_labels,
        test_images, test_labels
    split : 'train', 'val', 'test', or None for all three as a dict

    Returns
    -------
    (X, y): X float32 (N, C, H, W) in [0, 1], y int64 (N,) for binary/multi-class tasks
    or (N, L) for multi-label ones; or ``{split: (X, y)}`` when ``split`` is None.
    """
    path = os.fspath(path)
    if split is not None and split not in _MEDMNIST_SPLITS:
        raise ValueError(f"load_medmnist: split must be one of {_MEDMNIST_SPLITS} or None, "
                         f"got {split!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_medmnist: no such file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"load_medmnist: {path} is a folder; pass the .npz file itself")
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"load_medmnist: {path} is not a readable .npz file ({e})") from e
    if not hasattr(f, "files"):
        raise ValueError(f"load_medmnist: {path} holds a single array, not a MedMNIST .npz "
                         f"archive")
    with f:
        try:
            if split is None:
                return {s: _medmnist_split(path, f, s) for s in _MEDMNIST_SPLITS}
            return _medmnist_split(path, f, split)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ValueError(f"load_medmnist: {path} is damaged ({e})") from e
