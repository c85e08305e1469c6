"""Train the "CNN from scratch" MNIST network with fastconv and with PyTorch, in one run.

Network (the tutorial's): conv 3x3, 8 filters, no bias -> max-pool 2 -> linear 1352 -> 10,
cross-entropy, plain SGD. Data: the 10,000 MNIST *test* images in ../shared/data/mnist
(the only MNIST file here): first 8,000 to train, last 2,000 to test.

Both frameworks start from the same weights (He-normal conv, Glorot-uniform linear,
drawn once and copied into PyTorch) and see the images in the same order. Epochs are
interleaved (fastconv epoch, PyTorch epoch, fastconv epoch, ...) so that load from other
processes hits both alike; the ratio reported is the median of the per-epoch ratios.

    python benchmarks/bench_train.py                 # batch 1 (lr 0.005) and 32 (lr 0.05), 2 threads
    python benchmarks/bench_train.py --threads 1 2 --epochs 3 --json out.json

Anchor (PERFORMANCE.md, PyTorch 2.13 CPU, 2 threads, 3 epochs): batch 1 about 3.5 s an
epoch and 94.2% test accuracy; batch 32 about 0.3 s an epoch and 93.7%.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import fastconv  # noqa: I001  (first: it sets OpenBLAS/OpenMP thread settings)
import numpy as np

from fastconv import nn
from fastconv.data import load_mnist

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
CONFIGS = {1: 0.005, 32: 0.05}          # batch size -> learning rate


def fastconv_model(seed):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, bias=False, rng=rng), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 13 * 13, 10, rng=rng))


def torch_model(torch, ours):
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, bias=False), torch.nn.MaxPool2d(2),
                            torch.nn.Flatten(), torch.nn.Linear(8 * 13 * 13, 10))
    with torch.no_grad():
        m[0].weight.copy_(torch.from_numpy(ours[0].weight.data))
        m[3].weight.copy_(torch.from_numpy(ours[3].weight.data))
        m[3].bias.copy_(torch.from_numpy(ours[3].bias.data))
    return m


def torch_epoch(torch, model, opt, X, y, batch_size):
    F = torch.nn.functional
    model.train()
    t0 = time.perf_counter()
    for i in range(0, len(X), batch_size):
        out = model(X[i:i + batch_size])
        loss = F.cross_entropy(out, y[i:i + batch_size])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def torch_accuracy(torch, model, X, y):
    model.eval()
    with torch.no_grad():
        return float((model(X).argmax(1) == y).double().mean())


def run(torch, X, y, Xte, yte, batch_size, lr, epochs, seed, threads):
    fastconv.set_num_threads(threads)
    torch.set_num_threads(threads)
    ours = fastconv_model(seed)
    theirs = torch_model(torch, ours)
    opt_ours = nn.SGD(ours.parameters(), lr=lr)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    # warm-up (JIT compile, allocator) on throwaway copies
    warm = fastconv_model(seed)
    nn.fit(warm, X[:64], y[:64], loss, nn.SGD(warm.parameters(), lr=lr), 1, batch_size,
           shuffle=False, verbose=False)
    tw = torch_model(torch, warm)
    torch_epoch(torch, tw, torch.optim.SGD(tw.parameters(), lr=lr),
                torch.from_numpy(X[:64]), torch.from_numpy(y[:64]), batch_size)
    t_ours, t_theirs = [], []
    for _ in range(epochs):
        perm = rng.permutation(len(X))
        Xe, ye = X[perm], y[perm]
        h = nn.fit(ours, Xe, ye, loss, opt_ours, epochs=1, batch_size=batch_size,
                   shuffle=False, metrics=None, verbose=False)
        t_ours.append(h["seconds"][0])
        t_theirs.append(torch_epoch(torch, theirs, opt_theirs, torch.from_numpy(Xe),
                                    torch.from_numpy(ye), batch_size))
    ratios = [a / b for a, b in zip(t_ours, t_theirs)]
    return {
        "threads": threads, "batch_size": batch_size, "lr": lr, "epochs": epochs,
        "fastconv_seconds_per_epoch": t_ours, "torch_seconds_per_epoch": t_theirs,
        "fastconv_median": statistics.median(t_ours), "torch_median": statistics.median(t_theirs),
        "ratio_median": statistics.median(ratios),
        "fastconv_test_accuracy": nn.accuracy(yte, nn.predict(ours, Xte)),
        "torch_test_accuracy": torch_accuracy(torch, theirs, torch.from_numpy(Xte),
                                              torch.from_numpy(yte)),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of the MNIST t10k IDX files")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32],
                   help="of 1 (lr 0.005) and 32 (lr 0.05); others use lr 0.05")
    p.add_argument("--threads", type=int, nargs="+", default=[2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("bench_train: PyTorch is not installed (pip install torch==2.13.0); nothing "
              "to compare with", file=sys.stderr)
        return 1
    if not Path(args.data).is_dir():
        print(f"bench_train: {args.data} not found; pass --data", file=sys.stderr)
        return 1
    X, y = load_mnist(args.data)
    Xtr, ytr, Xte, yte = X[:8000], y[:8000], X[-2000:], y[-2000:]
    print(f"MNIST: {args.data} holds MNIST's 10,000 test images; first 8,000 train, last "
          f"2,000 test. fastconv {fastconv.__version__}, torch {torch.__version__}")
    print(f"{'threads':>7} {'batch':>5} {'lr':>6} {'fastconv s/ep':>13} {'torch s/ep':>10} "
          f"{'ratio':>6} {'acc fastconv':>12} {'acc torch':>9}")
    results = []
    for threads in args.threads:
        for bs in args.batch_sizes:
            r = run(torch, Xtr, ytr, Xte, yte, bs, CONFIGS.get(bs, 0.05), args.epochs,
                    args.seed, threads)
            results.append(r)
            print(f"{threads:>7} {bs:>5} {r['lr']:>6} {r['fastconv_median']:>13.3f} "
                  f"{r['torch_median']:>10.3f} {r['ratio_median']:>6.2f} "
                  f"{r['fastconv_test_accuracy']:>12.4f} {r['torch_test_accuracy']:>9.4f}",
                  flush=True)
    print("ratio = fastconv / PyTorch seconds per epoch (median of per-epoch ratios; "
          "< 1 means fastconv is faster)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
