"""The fused epilogue against the unfused sequence, per ResNet-18 layer (issue 14).

For each distinct convolution of ``fastconv.networks``' ResNet-18: ``conv2d(x, w, b,
activation="relu", residual=r)`` (bias, residual add and ReLU in the kernel's store)
against what a network did before: ``conv2d(x, w)``, ``+= bias``, ``+= r`` and
``np.maximum(y, 0)`` in NumPy, interleaved in one process. Prints each side's median
time, the plan, and the median per-round ratio unfused/fused (> 1: fused faster).

Both sides take the weight prepared (``fastconv.prepare_weight``), as a network's layers
do (``fastconv.nn.optimize``, ``fastconv.nn`` in eval mode). ``--weights array`` passes
the plain array instead: each call then also pays the implicit cache's bitwise check
of the weight (a 4.7 MB memcmp on layer4's 3x3 layers), which both sides pay alike.

    python benchmarks/bench_epilogue.py [--batch 1] [--threads 1] [--rounds 15]
                                        [--weights prepared|array]
"""
import argparse

import fastconv  # noqa: I001  (first: it sets OpenBLAS/OpenMP thread settings)
import numpy as np

from fastconv import networks
from fastconv.bench import cpu_model, interleaved, median_ratio


def layers():
    """(name, w, b, stride, padding) of each distinct ResNet-18 convolution, in order."""
    seen, out = set(), []
    spec = networks.build("resnet18")
    for layer in networks.convs(spec):
        K, C, R, S = layer["w"].shape
        key = (K, C, R, layer["stride"], layer["padding"])
        if key not in seen:
            seen.add(key)
            out.append(layer)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--weights", choices=("prepared", "array"), default="prepared")
    args = ap.parse_args()
    fastconv.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    # a layer's input size in ResNet-18 at 224 x 224, by its input channels
    sizes = {3: 224, 64: 56, 128: 28, 256: 14, 512: 7}
    print(f"{cpu_model()}, {args.threads} thread(s), N={args.batch}, float32, "
          f"{args.rounds} interleaved rounds, weights {args.weights}")
    print(f"{'layer':24s} {'plan':44s} {'fused ms':>9s} {'unfused ms':>10s} {'factor':>7s}")
    for layer in layers():
        w, b = layer["w"], layer["b"]
        K, C, R, S = w.shape
        if args.weights == "prepared":
            w = fastconv.prepare_weight(w)
        H = sizes[C]
        x = rng.standard_normal((args.batch, C, H, H), dtype=np.float32)
        kw = dict(stride=layer["stride"], padding=layer["padding"])
        y0 = fastconv.conv2d(x, w, b, **kw)
        r = rng.standard_normal(y0.shape, dtype=np.float32)
        bias = b.reshape(1, -1, 1, 1)

        def fused():
            return fastconv.conv2d(x, w, b, **kw, activation="relu", residual=r)

        def unfused():
            y = fastconv.conv2d(x, w, **kw)
            y += bias
            y += r
            np.maximum(y, 0, out=y)
            return y

        want = unfused()
        got = fused()
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
        with fastconv.trace_plans() as ran:
            fused()
        plan = ran[-1]
        t = {k: np.asarray(v) for k, v in interleaved(
            {"fused": fused, "unfused": unfused}, rounds=args.rounds, warmup=2,
            min_time=0.05).items()}
        print(f"{layer['name']:24s} {plan.algorithm + '/' + plan.variant:44s} "
              f"{np.median(t['fused']) * 1e3:9.3f} {np.median(t['unfused']) * 1e3:10.3f} "
              f"{median_ratio(t, 'unfused', 'fused'):7.2f}", flush=True)


if __name__ == "__main__":
    main()
