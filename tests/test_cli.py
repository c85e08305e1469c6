"""The ``fastconv`` command: train on the digits with few epochs, save, JSON, cam PNG."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastconv import cli, nn

pytest.importorskip("sklearn", reason="scikit-learn not installed: it ships the digits")


def test_train_digits_json_and_save(tmp_path, capsys):
    out_json, model_path = tmp_path / "r.json", tmp_path / "m.npz"
    rc = cli.main(["train", "--epochs", "2", "--quiet", "--json", str(out_json),
                   "--save", str(model_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "seconds per epoch" in printed
    r = json.loads(out_json.read_text())
    assert r["dataset"] == "digits" and r["model"] == "seed" and r["test_size"] == 360
    assert r["test_accuracy"] > 0.85 and len(r["seconds_per_epoch"]) == 2
    assert "test_auroc" not in r                                # not a binary task
    meta = nn.read_metadata(model_path)
    assert meta["architecture"] == "seed" and meta["input_shape"] == [1, 8, 8]
    model = cli.build_model("seed", (1, 8, 8), 10)
    model.load(model_path)


def test_cam_png(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (the plot extra)")
    model_path, png = tmp_path / "gap.npz", tmp_path / "cam.png"
    assert cli.main(["train", "--model", "gap", "--optimizer", "adam", "--lr", "0.01",
                     "--batch-size", "32", "--epochs", "1", "--quiet",
                     "--save", str(model_path)]) == 0
    assert cli.main(["cam", str(model_path), "3", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "digits test image 3" in capsys.readouterr().out
    # a seed model has no global average pooling: a clear refusal
    assert cli.main(["train", "--epochs", "0", "--quiet", "--save",
                     str(tmp_path / "seed.npz")]) == 0
    with pytest.raises(SystemExit, match="--model gap"):
        cli.main(["cam", str(tmp_path / "seed.npz"), "0", "--out", str(png)])
    with pytest.raises(SystemExit, match=r"IMAGE_INDEX must lie in \[0, 360\)"):
        cli.main(["cam", str(model_path), "360", "--out", str(png)])


def test_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--data is required"):
        cli.main(["train", "--dataset", "mnist"])
    assert cli.main(["train", "--dataset", "mnist", "--data", str(tmp_path)]) == 1
    assert "t10k-images-idx3-ubyte.gz not found" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "fastconv", "train", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--dataset" in r.stdout and "pneumoniamnist" in r.stdout


def test_models_shapes():
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert cli.build_model("seed", (1, 28, 28), 10)(x).shape == (2, 10)
    assert cli.build_model("gap", (1, 28, 28), 2)(x).shape == (2, 2)
    assert cli.build_model("seed", (1, 28, 28), 10)[3].weight.shape == (10, 8 * 13 * 13)


@pytest.mark.parametrize("model", ["seed", "gap"])
def test_train_on_cython_never_imports_numba(model):
    """FASTCONV_BACKEND=cython: ``fastconv train`` runs its first epoch on Cython
    kernels only, and never imports Numba (so nothing is JIT-compiled)."""
    from fastconv import _dispatch
    if "cython" not in _dispatch.available_backends():
        pytest.skip("Cython backend not built")
    code = ("import json, sys, fastconv\n"
            "from fastconv import cli\n"
            "with fastconv.trace_plans() as ran:\n"
            f"    rc = cli.main(['train', '--model', '{model}', '--epochs', '1', '--quiet'])\n"
            "assert rc == 0\n"
            "print(json.dumps([sorted({p.backend for p in ran}), len(ran),\n"
            "                  'numba' in sys.modules]))\n")
    env = dict(os.environ, FASTCONV_BACKEND="cython")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    backends, n, numba = json.loads(r.stdout.strip().splitlines()[-1])
    assert backends == ["cython"] and n > 1000 and not numba, r.stdout
