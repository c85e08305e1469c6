"""The demonstrations of issue 17 for ``fastconv.dask``.

    python benchmarks/bench_dask.py bigimage  [--size 8192] [--limit-gib 2]
    python benchmarks/bench_dask.py mnist     --data DIR [--epochs 1] [--batch-size 64]
    python benchmarks/bench_dask.py scaling   [--size 8192] [--batch 32]

``bigimage``: a (1, 16, S, S) float32 image (4 GiB at S = 8192), generated lazily by
``da.random.default_rng(0)`` in chunks of (1, 16, 1024, 1024), convolved 16 -> 16 with
a 3x3 weight (padding 1) by ``fastconv.dask.conv2d`` and reduced chunk by chunk to a
per-chunk checksum (the sum of each output chunk), on Dask's threaded scheduler, in a
child process whose memory is limited (``RLIMIT_AS``) or, if that limit breaks the
process, measured (peak RSS) and asserted under the limit. Sampled tiles (at chunk
corners, so the halo is exercised) and one whole chunk's checksum are checked
against ``fastconv.conv2d`` on those tiles' input windows, in memory.

``mnist``: the seed network of ``fastconv train`` (``fastconv.cli.build_model``) on
MNIST (first 8,000 of t10k to train, last 2,000 to test), ``fastconv.nn.fit`` in one
process against ``fastconv.dask.fit`` on a ``LocalCluster(n_workers=2,
threads_per_worker=1)``: same seed, same global batch, same optimiser.

``scaling``: ResNet-18 inference (``fastconv.networks``) over a batch chunked along N,
and the S x S 16 -> 16 3x3 convolution chunked spatially, on a LocalCluster of 1 then 2
workers (1 thread each, ``NUMBA_NUM_THREADS=1`` in the workers).

Import fastconv only inside functions: spawned workers import this file's top level.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

GIB = 1 << 30


def _rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB   # KiB on Linux


def _lscpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines()
                    if l.startswith("Model name"))
    except Exception:                                             # pragma: no cover
        return "unknown"


def _image(S, C=16, chunk=1024):
    import dask.array as da
    return da.random.default_rng(0).standard_normal((1, C, S, S), dtype=np.float32,
                                                    chunks=(1, C, chunk, chunk))


def _weight(C=16):
    rng = np.random.default_rng(1)
    return (rng.standard_normal((C, C, 3, 3)) / np.sqrt(C * 9)).astype(np.float32)


# -- 1. big image, bounded memory --------------------------------------------------------


def _bigimage_child(args):
    """Runs in the child process (after the optional RLIMIT_AS)."""
    import dask
    import fastconv
    import fastconv.dask as fd

    S, chunk = args.size, args.chunk
    if args.numba_threads:
        fastconv.set_num_threads(args.numba_threads)
    x = _image(S, chunk=chunk)
    w = _weight()
    # warm-up: load the JIT-compiled kernels for the block shape (not timed)
    t0 = time.perf_counter()
    fastconv.conv2d(np.zeros((1, 16, chunk + 2, chunk + 2), np.float32), w)
    warm = time.perf_counter() - t0
    y = fd.conv2d(x, w, padding=1)
    assert y.shape == (1, 16, S, S), y.shape
    # the plan every block runs (direct for an input chunked along W): the sampled
    # tiles below are computed in memory by its algorithm, to be equal bit for bit
    algorithm = fd.plan(x, w, padding=1).algorithm
    # per-chunk checksum: each output chunk reduced to one float64 in its own task
    sums = y.map_blocks(lambda b: b.sum(dtype=np.float64).reshape(1, 1, 1, 1),
                        chunks=(1, 1, 1, 1), dtype=np.float64)
    info = {"input_gib": x.nbytes / GIB, "output_gib": y.nbytes / GIB,
            "chunks": int(np.prod(x.numblocks)), "algorithm": algorithm,
            "chunk_mib": x.dtype.itemsize * 16 * chunk * chunk / (1 << 20),
            "tasks": len(dict(sums.__dask_graph__()))}
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=args.workers):
        checksums = sums.compute()[0, 0]
    info["seconds"] = time.perf_counter() - t0
    info["warmup_seconds"] = warm
    info["rss_after_conv_gib"] = _rss_gib()
    info["gflops"] = 2 * S * S * 16 * 16 * 9 / info["seconds"] / 1e9

    # sampled tiles: T x T output tiles across chunk corners, against fastconv.conv2d
    T = 256
    rng = np.random.default_rng(2)
    corners = [(0, 0), (S - T, S - T), (0, S - T)]
    nb = S // chunk
    for _ in range(args.tiles):
        i, j = rng.integers(1, nb, size=2) if nb > 1 else (0, 0)
        corners.append((int(i * chunk - T // 2), int(j * chunk - T // 2)))
    max_err, max_ref = 0.0, 0.0
    with dask.config.set(scheduler="threads", num_workers=args.workers):
        for r0, c0 in corners:
            got = y[:, :, r0:r0 + T, c0:c0 + T].compute()
            lo_r, lo_c = max(r0 - 1, 0), max(c0 - 1, 0)
            hi_r, hi_c = min(r0 + T + 1, S), min(c0 + T + 1, S)
            win = x[:, :, lo_r:hi_r, lo_c:hi_c].compute()
            # zero padding only where the window meets the image border
            win = np.pad(win, ((0, 0), (0, 0), (lo_r - (r0 - 1), (r0 + T + 1) - hi_r),
                               (lo_c - (c0 - 1), (c0 + T + 1) - hi_c)))
            ref = fastconv.conv2d(win, w, padding=0, algorithm=algorithm)
            assert ref.shape == got.shape, (ref.shape, got.shape)
            max_err = max(max_err, float(np.abs(got - ref).max()))
            max_ref = max(max_ref, float(np.abs(ref).max()))
        # one whole chunk (an interior one if there is one) against its checksum
        ci = cj = min(1, nb - 1)
        r0, c0 = ci * chunk, cj * chunk
        lo_r, lo_c = max(r0 - 1, 0), max(c0 - 1, 0)
        win = x[:, :, lo_r:min(r0 + chunk + 1, S), lo_c:min(c0 + chunk + 1, S)].compute()
        win = np.pad(win, ((0, 0), (0, 0), (lo_r - (r0 - 1), r0 + chunk + 1 - min(r0 + chunk + 1, S)),
                           (lo_c - (c0 - 1), c0 + chunk + 1 - min(c0 + chunk + 1, S))))
        ref_sum = float(fastconv.conv2d(win, w, padding=0, algorithm=algorithm)
                        .sum(dtype=np.float64))
    info.update(tiles=len(corners), tile=T, max_abs_err=max_err, max_abs_ref=max_ref,
                rel_err=max_err / max_ref, chunk_checksum=float(checksums[ci, cj]),
                chunk_checksum_ref=ref_sum,
                checksum_rel_diff=abs(float(checksums[ci, cj]) - ref_sum) / max(abs(ref_sum), 1e-30),
                peak_rss_gib=_rss_gib(), numba_threads=fastconv.get_num_threads(),
                dask_threads=args.workers)
    print("RESULT " + json.dumps(info), flush=True)


def bigimage(args):
    base = [sys.executable, os.path.abspath(__file__), "_bigimage_child", "--size",
            str(args.size), "--chunk", str(args.chunk), "--workers", str(args.workers),
            "--tiles", str(args.tiles), "--limit-gib", str(args.limit_gib),
            "--numba-threads", str(args.numba_threads)]
    print(f"CPU: {_lscpu()}; image (1, 16, {args.size}, {args.size}) float32 = "
          f"{16 * args.size ** 2 * 4 / GIB:.2f} GiB, chunks of {args.chunk}^2; "
          f"memory limit {args.limit_gib} GiB", flush=True)
    modes = ["rlimit", "rss"] if not args.rss_only else ["rss"]
    for mode in modes:
        t0 = time.perf_counter()
        p = subprocess.run(base + (["--rlimit"] if mode == "rlimit" else []),
                           capture_output=True, text=True)
        line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
        if p.returncode != 0 or line is None:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            print(f"[{mode}] child failed (exit {p.returncode}) after "
                  f"{time.perf_counter() - t0:.1f} s: {' | '.join(tail)}", flush=True)
            continue
        r = json.loads(line[7:])
        how = (f"RLIMIT_AS = {args.limit_gib} GiB set before importing fastconv/numba/dask"
               if mode == "rlimit" else "no limit; peak RSS (ru_maxrss) asserted")
        print(f"[{mode}] {how}")
        print(f"  input {r['input_gib']:.2f} GiB, output {r['output_gib']:.2f} GiB, "
              f"{r['chunks']} chunks of {r['chunk_mib']:.0f} MiB, {r['tasks']} tasks, "
              f"plan {r['algorithm']}; "
              f"threaded scheduler, {r['dask_threads']} thread(s) x "
              f"{r['numba_threads']} numba thread(s)")
        print(f"  warm-up (one in-memory block, JIT load) {r['warmup_seconds']:.1f} s; "
              f"conv + per-chunk checksum: {r['seconds']:.1f} s "
              f"({r['gflops']:.1f} GFLOP/s incl. random generation)")
        print(f"  peak RSS {r['peak_rss_gib']:.3f} GiB (after the conv: "
              f"{r['rss_after_conv_gib']:.3f} GiB) vs limit {args.limit_gib} GiB")
        print(f"  {r['tiles']} sampled {r['tile']}x{r['tile']} tiles vs fastconv.conv2d "
              f"(algorithm={r['algorithm']!r}): "
              f"max |err| {r['max_abs_err']:.3g} (max |y| {r['max_abs_ref']:.3g}, "
              f"rel {r['rel_err']:.2g}); chunk (1,1) checksum {r['chunk_checksum']:.6f} "
              f"vs {r['chunk_checksum_ref']:.6f} (rel {r['checksum_rel_diff']:.2g})",
              flush=True)
        assert r["peak_rss_gib"] < args.limit_gib, "peak RSS over the limit"
        assert r["max_abs_err"] == 0 and r["checksum_rel_diff"] == 0, \
            "tiles differ from the in-memory result by the plan's algorithm"
        if mode == "rlimit":
            break


def _bigimage_child_main(args):
    if args.rlimit:
        lim = int(args.limit_gib * GIB)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    _bigimage_child(args)


# -- 2. distributed MNIST training ----------------------------------------------------------


def _env(numba_threads):
    # the kernels' threads and NumPy's BLAS threads (used by some of fastconv's plans)
    env = {k: str(numba_threads) for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                                           "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    for k in ("FASTCONV_CACHE_DIR", "PYTHONPATH"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def mnist(args):
    from distributed import Client, LocalCluster

    import fastconv
    import fastconv.dask as fd
    from fastconv import nn
    from fastconv.cli import build_model
    from fastconv.data import load_mnist

    X, y = load_mnist(args.data)
    Xtr, ytr, Xte, yte = X[:8000], y[:8000], X[-2000:], y[-2000:]
    print(f"CPU: {_lscpu()}; MNIST {args.data}: first 8,000 train, last 2,000 test; seed "
          f"network (fastconv.cli.build_model('seed')), SGD lr {args.lr} momentum "
          f"{args.momentum}, global batch {args.batch_size}, {args.epochs} epoch(s), "
          f"seed {args.seed}", flush=True)

    def run(client):
        model = build_model("seed", (1, 28, 28), 10, seed=args.seed)
        opt = nn.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
        kw = dict(epochs=args.epochs, batch_size=args.batch_size, shuffle=True,
                  seed=args.seed, verbose=False)
        if client is None:
            h = nn.fit(model, Xtr, ytr, nn.CrossEntropyLoss(), opt, **kw)
        else:
            h = fd.fit(model, Xtr, ytr, nn.CrossEntropyLoss(), opt, client, **kw)
        acc = nn.accuracy(yte, nn.predict(model, Xte))
        return model, h, acc

    rows = []
    m1, h1, a1 = run(None)
    rows.append(("nn.fit, 1 process", fastconv.get_num_threads(), h1, a1))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, env=_env(1)) as cluster, Client(cluster) as c:
        m2, h2, a2 = run(c)
    rows.append(("dask.fit, 2 workers x 1 thread", 1, h2, a2))
    print(f"{'run':32s} {'threads':>7s} {'test acc':>9s} {'final loss':>11s}  seconds per epoch")
    for name, th, h, a in rows:
        print(f"{name:32s} {th:7d} {100 * a:8.2f}% {h['loss'][-1]:11.5f}  "
              + ", ".join(f"{s:.2f}" for s in h["seconds"]))
    dp = max(float(np.max(np.abs(p.data - q.data))) for p, q in
             zip(m1.parameters(), m2.parameters()))
    pm = max(float(np.max(np.abs(p.data))) for p in m1.parameters())
    print(f"accuracy difference {100 * abs(a1 - a2):.2f} points (must be <= 0.5); "
          f"max |parameter difference| {dp:.3g} (max |parameter| {pm:.3g}, "
          f"{m1.parameters()[0].data.dtype})", flush=True)
    assert abs(a1 - a2) <= 0.005


# -- 3. scaling 1 -> 2 workers -------------------------------------------------------------------


def _resnet_block(seed, n, shape, spec):
    """``n`` images made on the worker (as a loader reading its own block would) through
    ResNet-18: no input data sits on one worker, so the scheduler spreads the blocks."""
    from fastconv.networks import fastconv_forward
    xb = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    return fastconv_forward(spec)(xb)


def scaling(args):
    from distributed import Client, LocalCluster

    import fastconv.dask as fd
    from fastconv import networks

    spec = networks.build("resnet18")
    nbytes = sum(L["w"].nbytes + (0 if L["b"] is None else L["b"].nbytes)
                 for L in networks.convs(spec))
    C, H, W = spec["input"]
    xr = np.random.default_rng(0).standard_normal((1, C, H, W)).astype(np.float32)
    S = args.size
    w = _weight()
    print(f"CPU: {_lscpu()}; LocalCluster(n_workers=k, threads_per_worker=1), "
          f"NUMBA_NUM_THREADS=OMP/OPENBLAS/MKL_NUM_THREADS=1 per worker; best of {args.repeat}", flush=True)
    print(f"ResNet-18: batch {args.batch} x {C}x{H}x{W} in 4 blocks of {args.batch // 4} "
          f"images, each made by its task on a worker; conv weights {nbytes / 1e6:.1f} MB "
          f"scattered (broadcast) once per cluster", flush=True)
    print(f"conv: (1, 16, {S}, {S}) float32 ({16 * S * S * 4 / GIB:.2f} GiB) generated on "
          f"the workers in 1024^2 chunks, 16->16 3x3 pad 1, per-chunk checksum", flush=True)
    results = {}
    for k in (1, 2):
        with LocalCluster(n_workers=k, threads_per_worker=1, processes=True,
                          dashboard_address=None, env=_env(1)) as cluster, \
                Client(cluster) as client:
            spec_f = client.scatter(spec, broadcast=True)
            nb = args.batch // 4

            def resnet():
                futs = [client.submit(_resnet_block, i, nb, (C, H, W), spec_f, pure=False)
                        for i in range(4)]
                return np.concatenate(client.gather(futs))

            x = _image(S)
            y = fd.conv2d(x, w, padding=1)
            sums = y.map_blocks(lambda b: b.sum(dtype=np.float64).reshape(1, 1, 1, 1),
                                chunks=(1, 1, 1, 1), dtype=np.float64)

            def conv():
                return client.compute(sums).result()

            # warm-up: JIT load in every worker, weights in place
            client.run(lambda: __import__("fastconv").conv2d(
                np.zeros((1, 16, 8, 8), np.float32), np.zeros((16, 16, 3, 3), np.float32)))
            t = {}
            print(f"  {k} worker(s): fastconv threads per worker "
                  f"{sorted(client.run(lambda: __import__('fastconv').get_num_threads()).values())}",
                  flush=True)
            for name, fn in (("resnet18", resnet), ("conv", conv)):
                if args.only and name != args.only:
                    t[name] = float("nan")
                    continue
                best = float("inf")
                for rep in range(args.repeat + 1):       # the first run warms up
                    t0 = time.perf_counter()
                    fn()
                    dt = time.perf_counter() - t0
                    if rep > 0 or args.repeat == 0:
                        best = min(best, dt)
                    print(f"  {k} worker(s) {name}: run {rep} {dt:.2f} s"
                          + (" (warm-up)" if rep == 0 and args.repeat else ""), flush=True)
                t[name] = best
            results[k] = t
    flops_r = None
    try:
        prof = []
        networks.fastconv_forward(spec, profile=prof)(xr)
        flops_r = sum(p[3] for p in prof) * args.batch
    except Exception:                                              # pragma: no cover
        pass
    flops_c = 2 * S * S * 16 * 16 * 9
    print()
    print("| workload | 1 worker (s) | 2 workers (s) | speed-up | direct-conv GFLOP/s, 2 workers |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, fl, label in (("resnet18", flops_r, f"ResNet-18 inference, batch {args.batch}"),
                            ("conv", flops_c, f"{S}x{S}x16 3x3 conv, 1024^2 chunks")):
        a, b = results[1][name], results[2][name]
        g = f"{fl / b / 1e9:.1f}" if fl else "n/a"
        print(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {g} |")
    print(f"(ResNet-18 conv weights {nbytes / 1e6:.1f} MB; conv FLOP {flops_c / 1e9:.0f} G; "
          f"ResNet-18 conv FLOP {flops_r / 1e9 if flops_r else float('nan'):.1f} G)", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bigimage")
    c = sub.add_parser("_bigimage_child")
    for q in (b, c):
        q.add_argument("--size", type=int, default=8192)
        q.add_argument("--chunk", type=int, default=512)
        q.add_argument("--workers", type=int, default=2, help="Dask threads")
        q.add_argument("--tiles", type=int, default=3)
        q.add_argument("--limit-gib", type=float, default=2.0)
        q.add_argument("--numba-threads", type=int, default=0, help="0: fastconv's default")
    b.add_argument("--rss-only", action="store_true")
    c.add_argument("--rlimit", action="store_true")
    m = sub.add_parser("mnist")
    m.add_argument("--data", default="/work/shared/data/mnist")
    m.add_argument("--epochs", type=int, default=1)
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--lr", type=float, default=0.05)
    m.add_argument("--momentum", type=float, default=0.9)
    m.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("scaling")
    s.add_argument("--size", type=int, default=8192)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--repeat", type=int, default=1)
    s.add_argument("--only", choices=("resnet18", "conv"))
    a = p.parse_args(argv)
    if a.cmd == "_bigimage_child":
        return _bigimage_child_main(a)
    return {"bigimage": bigimage, "mnist": mnist, "scaling": scaling}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
