"""im2col forward against NumPy's sliding_window_view + matmul and PyTorch (issue 2).

For each layer of ../shared/PERFORMANCE.md: fastconv's im2col kernel, a plain NumPy
im2col (sliding_window_view, one copy into a patch matrix, one matmul) and, when
installed, PyTorch's F.conv2d, interleaved in one process. Prints GFLOP/s (medians)
and the median per-round ratio NumPy/fastconv (> 1: fastconv faster).

    python benchmarks/bench_im2col.py [--batch 1] [--threads 2] [--rounds 7] [--layers a,b]
"""
import argparse

import fastconv  # noqa: I001  (first: it sets OpenBLAS/OpenMP thread settings)
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fastconv.bench import LAYERS, interleaved, layer, median_ratio


def numpy_conv2d(x, w, stride, pad):
    """The textbook NumPy convolution: windows view, patch matrix, one matmul."""
    N, C, _, _ = x.shape
    K, _, R, S = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xp, (R, S), axis=(2, 3))[:, :, ::stride, ::stride]  # N C P Q R S
    P, Q = win.shape[2:4]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(N * P * Q, C * R * S)
    y = cols @ w.reshape(K, -1).T
    return np.ascontiguousarray(y.reshape(N, P, Q, K).transpose(0, 3, 1, 2))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    args = ap.parse_args(argv)
    fastconv.set_num_threads(args.threads)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("PyTorch not installed: its column is left out (pip install torch==2.13.0)")
    layers = [layer(n) for n in args.layers.split(",")] if args.layers else LAYERS
    rng = np.random.default_rng(0)
    print(f"float32, N={args.batch}, {args.threads} threads, median of {args.rounds} interleaved rounds")
    print(f"{'layer':22s} {'im2col':>8s} {'numpy':>8s} {'torch':>8s}  {'numpy/im2col':>12s}"
          f" {'torch/im2col':>12s}   (GFLOP/s; ratios of times)")
    worst = np.inf
    for L in layers:
        xs, ws = L.shapes(args.batch)
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal(ws, dtype=np.float32)
        flops = L.params(args.batch).flops
        contenders = {
            "im2col": lambda: fastconv.conv2d(x, w, stride=L.stride, padding=L.pad, algorithm="im2col"),
            "numpy": lambda: numpy_conv2d(x, w, L.stride, L.pad),
        }
        if torch is not None:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            contenders["torch"] = lambda: torch.nn.functional.conv2d(tx, tw, None, L.stride, L.pad).numpy()
        t = interleaved(contenders, rounds=args.rounds, min_time=0.05)
        gf = {k: flops / np.median(v) / 1e9 for k, v in t.items()}
        r_np = median_ratio(t, "numpy", "im2col")
        r_t = median_ratio(t, "torch", "im2col") if torch is not None else float("nan")
        worst = min(worst, r_np)
        print(f"{L.name:22s} {gf['im2col']:8.1f} {gf['numpy']:8.1f} {gf.get('torch', np.nan):8.1f}"
              f"  {r_np:12.2f} {r_t:12.2f}", flush=True)
    print(f"worst numpy/im2col ratio: {worst:.2f} ({'im2col at least as fast everywhere' if worst >= 1 else 'im2col slower somewhere'})")


if __name__ == "__main__":
    main()
