"""The ``fastconv`` command.

    fastconv train [--dataset digits|mnist|pneumoniamnist] [--data PATH] [--model seed|gap]
                   [--epochs N] [--batch-size B] [--lr LR] [--optimizer sgd|adam]
                   [--seed S] [--threads T] [--save MODEL.npz] [--json RESULT.json] [--quiet]
    fastconv cam MODEL.npz IMAGE_INDEX --out cam.png [--data PATH] [--class-index C]
    fastconv bench [--quick] [--layers ...] [--networks ...] [--ops ...] [--algorithms ...]
                   [--backends ...] [--threads ...] [--batch ...] [--json PATH] [--plot PATH]

``fastconv bench`` times the layer table x the registry x the ops and whole networks
against PyTorch and the FMA peak measured in the same run (``fastconv/bench.py``;
docs/benchmarks.md).

Splits (fixed, so figures are comparable):

* digits: scikit-learn's 1,797 8x8 digits in the order of
  ``numpy.random.default_rng(0).permutation(1797)``: first 1,437 to train, other 360
  to test (80/20; the file itself is ordered by writer)
* mnist: the folder's 10,000 MNIST *test* images (the 60,000-image training file is
  not needed): first 8,000 to train, last 2,000 to test
* pneumoniamnist: the file's train split to train, val to validate, test to test

A model saved with ``--save`` records its architecture, dataset, data path and input
shape in the file, so ``fastconv cam`` can rebuild it.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

DATASETS = ("digits", "mnist", "pneumoniamnist")
MODELS = ("seed", "gap")
MODEL_FORMAT = "fastconv-model/1"
CLASS_NAMES = {"pneumoniamnist": {0: "normal", 1: "pneumonia"}}

#: defaults per dataset: (model, epochs, batch size, lr, optimizer)
DEFAULTS = {
    "digits": dict(model="seed", epochs=10, batch_size=1, lr=0.05, optimizer="sgd"),
    "mnist": dict(model="seed", epochs=3, batch_size=1, lr=0.005, optimizer="sgd"),
    "pneumoniamnist": dict(model="gap", epochs=10, batch_size=32, lr=0.001, optimizer="adam"),
}


# -- models -------------------------------------------------------------------------------


def build_model(architecture, input_shape, num_classes, seed=None):
    """The two networks of the command line, from :mod:`fastconv.nn.models`:
    ``seed`` (:func:`~fastconv.nn.models.seed_cnn`, the classic "CNN from scratch"
    MNIST network) and ``gap`` (:func:`~fastconv.nn.models.gap_cnn`: conv-BN-ReLU
    blocks, global average pooling and a linear layer, so class activation maps
    apply; BatchNorm makes PneumoniaMNIST training steadier from seed to seed)."""
    from .nn import models
    builders = {"seed": models.seed_cnn, "gap": models.gap_cnn}
    if architecture not in builders:
        raise ValueError(f"unknown model {architecture!r}; choose from {', '.join(MODELS)}")
    return builders[architecture](tuple(input_shape), num_classes, rng=seed)


# -- data ---------------------------------------------------------------------------------


def load_dataset(dataset, data_path=None):
    """``(X_train, y_train, X_val, y_val, X_test, y_test, note)`` for the command's
    fixed splits (no validation split: ``X_val = y_val = None``)."""
    from . import data
    if dataset == "digits":
        X, y = data.load_digits()
        # the file is ordered by writer: a fixed shuffle mixes writers into both parts
        perm = np.random.default_rng(0).permutation(len(X))
        tr, te = perm[:1437], perm[1437:]
        return (X[tr], y[tr], None, None, X[te], y[te],
                "digits: scikit-learn's 1,797 8x8 digits, shuffled by "
                "numpy.random.default_rng(0).permutation; first 1,437 train, other 360 test")
    if dataset == "mnist":
        if data_path is None:
            raise SystemExit("fastconv: --data is required for --dataset mnist: the folder "
                             "holding t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
        X, y = data.load_mnist(data_path)
        if len(X) < 10000:
            raise SystemExit(f"fastconv: {data_path} holds {len(X)} MNIST images; the split "
                             f"needs 10,000 (first 8,000 train, last 2,000 test)")
        return (X[:8000], y[:8000], None, None, X[-2000:], y[-2000:],
                f"mnist: {data_path} holds MNIST's 10,000 test images (t10k); "
                f"first 8,000 train, last 2,000 test")
    if dataset == "pneumoniamnist":
        if data_path is None:
            raise SystemExit("fastconv: --data is required for --dataset pneumoniamnist: "
                             "the pneumoniamnist.npz file")
        splits = data.load_medmnist(data_path, split=None)
        (Xtr, ytr), (Xv, yv), (Xte, yte) = splits["train"], splits["val"], splits["test"]
        return (Xtr, ytr, Xv, yv, Xte, yte,
                f"pneumoniamnist: {data_path}; train {len(Xtr)} / val {len(Xv)} / "
                f"test {len(Xte)} images (the file's own splits); label 0 normal, "
                f"1 pneumonia")
    raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")


# -- commands --------------------------------------------------------------------------------


def _train(args):
    import fastconv
    from . import nn
    if args.threads is not None:
        fastconv.set_num_threads(args.threads)
    d = DEFAULTS[args.dataset]
    model_name = args.model or d["model"]
    epochs = d["epochs"] if args.epochs is None else args.epochs
    batch_size = args.batch_size or d["batch_size"]
    lr = args.lr or d["lr"]
    opt_name = args.optimizer or d["optimizer"]
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    data_path = None if args.data is None else os.path.abspath(args.data)
    Xtr, ytr, Xv, yv, Xte, yte, note = load_dataset(args.dataset, data_path)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    input_shape = tuple(int(s) for s in Xtr.shape[1:])
    model = build_model(model_name, input_shape, num_classes, seed=args.seed)
    opt = (nn.SGD(model.parameters(), lr=lr) if opt_name == "sgd"
           else nn.Adam(model.parameters(), lr=lr))
    binary = num_classes == 2
    metrics = ("accuracy", "auroc") if binary else ("accuracy",)
    say(note)
    say(f"model {model_name}: {sum(p.data.size for p in model.parameters())} parameters; "
        f"{opt_name} lr {lr}, batch {batch_size}, {epochs} epochs, "
        f"{fastconv.get_num_threads()} thread(s)")
    history = nn.fit(model, Xtr, ytr, nn.CrossEntropyLoss(), opt, epochs=epochs,
                     batch_size=batch_size,
                     validation_data=None if Xv is None else (Xv, yv),
                     metrics=metrics, shuffle=True, seed=args.seed, verbose=not args.quiet)
    t0 = time.perf_counter()
    out = nn.predict(model, Xte)
    test_acc = nn.accuracy(yte, out)
    result = {
        "dataset": args.dataset, "data": data_path, "split": note, "model": model_name,
        "optimizer": opt_name, "lr": lr, "batch_size": batch_size, "epochs": epochs,
        "seed": args.seed, "threads": fastconv.get_num_threads(),
        "train_size": int(len(Xtr)), "test_size": int(len(Xte)),
        "test_accuracy": test_acc,
        "seconds_per_epoch": history["seconds"],
        "mean_seconds_per_epoch": float(np.mean(history["seconds"])) if epochs else None,
        "history": history,
    }
    line = f"test accuracy {test_acc:.4f} ({len(Xte)} images)"
    if binary:
        result["test_auroc"] = nn.auroc_from_output(yte, out)
        line += f", test AUROC {result['test_auroc']:.4f}"
    secs = ", ".join(f"{s:.2f}" for s in history["seconds"])
    line += f"; seconds per epoch: {secs}"
    print(line, flush=True)
    say(f"(evaluation {time.perf_counter() - t0:.2f} s)")
    if args.save:
        meta = {"format": MODEL_FORMAT, "architecture": model_name, "dataset": args.dataset,
                "data": data_path, "input_shape": list(input_shape),
                "num_classes": num_classes, "test_accuracy": test_acc}
        model.save(args.save, metadata=meta)
        say(f"model saved to {args.save}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        say(f"results written to {args.json}")
    return 0


def _cam(args):
    from . import nn
    meta = nn.read_metadata(args.model)
    if meta.get("format") != MODEL_FORMAT:
        raise SystemExit(f"fastconv cam: {args.model} was not saved by `fastconv train --save` "
                         f"(no {MODEL_FORMAT} metadata), so its architecture is unknown")
    if meta["architecture"] != "gap":
        raise SystemExit(f"fastconv cam: {args.model} is a {meta['architecture']!r} model; "
                         f"class activation maps need a network ending in global average "
                         f"pooling and a linear layer: train one with --model gap")
    model = build_model(meta["architecture"], tuple(meta["input_shape"]), meta["num_classes"])
    model.load(args.model)
    data_path = args.data or meta.get("data")
    *_, Xte, yte, note = load_dataset(meta["dataset"], data_path)
    if not 0 <= args.image_index < len(Xte):
        raise SystemExit(f"fastconv cam: IMAGE_INDEX must lie in [0, {len(Xte)}) (the test "
                         f"split of {meta['dataset']}), got {args.image_index}")
    x = Xte[args.image_index]
    logits = nn.predict(model, x[None])[0]
    pred = int(np.argmax(logits))
    cls = pred if args.class_index is None else args.class_index
    cam = nn.class_activation_map(model, x, cls)
    names = CLASS_NAMES.get(meta["dataset"], {})

    def name(c):
        return f"{c} ({names[c]})" if c in names else str(c)
    title = (f"{meta['dataset']} test image {args.image_index}: label "
             f"{name(int(yte[args.image_index]))}, predicted {name(pred)}; CAM of class {name(cls)}")
    nn.save_cam_overlay(x, cam, args.out, title=title)
    print(f"{title}\nwritten to {args.out}")
    return 0


def _parser():
    p = argparse.ArgumentParser(prog="fastconv", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="{train,cam,bench}")
    t = sub.add_parser("train", help="train a small network and report test accuracy",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--dataset", choices=DATASETS, default="digits")
    t.add_argument("--data", metavar="PATH",
                   help="mnist: folder of the IDX .gz files; pneumoniamnist: the .npz file")
    t.add_argument("--model", choices=MODELS, help="default: seed (gap for pneumoniamnist)")
    t.add_argument("--epochs", type=int, help="default: 10 digits, 3 mnist, 10 pneumoniamnist")
    t.add_argument("--batch-size", type=int, help="default: 1 (32 for pneumoniamnist)")
    t.add_argument("--lr", type=float, help="default: 0.05 digits, 0.005 mnist, 0.001 pneumonia")
    t.add_argument("--optimizer", choices=("sgd", "adam"),
                   help="default: sgd (adam for pneumoniamnist)")
    t.add_argument("--seed", type=int, default=0, help="initialisation and shuffling (0)")
    t.add_argument("--threads", type=int, default=1,
                   help="kernel and BLAS threads (default 1: these small networks are "
                        "bound by per-call overhead, where more threads only add "
                        "synchronisation)")
    t.add_argument("--save", metavar="MODEL.npz", help="save the trained model here")
    t.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    t.add_argument("--quiet", action="store_true", help="no progress bars, only the result")
    c = sub.add_parser("cam", help="save a class activation map of a test image as PNG")
    c.add_argument("model", metavar="MODEL", help="a model saved by `fastconv train --save`")
    c.add_argument("image_index", metavar="IMAGE_INDEX", type=int,
                   help="index into the dataset's test split")
    c.add_argument("--out", required=True, metavar="FILE.png")
    c.add_argument("--data", metavar="PATH", help="override the data path stored in the model")
    c.add_argument("--class-index", type=int, help="default: the predicted class")
    from . import bench
    b = sub.add_parser("bench", help="time layers and networks against PyTorch and the FMA peak",
                       description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(b)
    return p


def main(argv=None):
    """Entry point of the ``fastconv`` console script (and ``python -m fastconv``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "bench":
            from . import bench
            return bench.run_cli(args)
        return _train(args) if args.command == "train" else _cam(args)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"fastconv {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
