"""Whole networks: fastconv's functional API against PyTorch eager, ONNX Runtime and
OpenVINO, with the same weights (issue 13's yardstick).

The ``fastconv`` engine is ``fastconv.networks.fastconv_forward``: weights prepared
once, the input converted to channels last once, bias, residual and activation fused
into each convolution. ``torch`` is PyTorch eager as a user writes it (NCHW);
``torch_cl`` the same module and input in PyTorch's ``channels_last`` memory format.

Networks from ``fastconv/networks.py`` (BatchNorm folded, random He-init weights,
float32). The ``nn.optimize`` engine runs the same weights through
``fastconv.nn.optimize(fastconv.nn.models.<network>())`` (ResNet-18/50, MobileNet-v2:
the weights loaded by ``load_state_dict``, each bias as a BatchNorm that optimize folds
back). Each engine runs in its own process, all alive for the whole run; the driver
asks them in turn to time one forward pass (rotating which goes first, with a pause
between engines so that no engine's idle threads spin into the next one's turn; ONNX
Runtime's spinning is off), round by round,
and reports each engine's median and the median per-round ratio engine time /
fastconv time (> 1: fastconv faster). Outputs are checked against fastconv's once per
network. PyTorch, ONNX Runtime and OpenVINO are optional: an engine that is not
installed is skipped (ONNX Runtime and OpenVINO run the ONNX export of the PyTorch
network; OpenVINO with ``INFERENCE_PRECISION_HINT=f32``, since it defaults to bf16 on
CPUs with AMX).

``--layers`` adds a per-layer breakdown of fastconv's time: each convolution, the plan
it ran, its GFLOP/s and % of the FMA peak measured in the same run. ``--steps`` lists
``nn.optimize``'s steps, each timed as the network runs it and again repeated at once
(``OptimizedModel.profile``), and ONNX Runtime's nodes as its profiler times them.

    python benchmarks/bench_networks.py                        # resnet18, resnet50, mobilenet_v2; N=1, 8; 2 and 1 threads
    python benchmarks/bench_networks.py --networks resnet18 --batch 1 --threads 2 --layers
    python benchmarks/bench_networks.py --networks resnet50 --batch 1 --threads 2 \
        --engines fastconv nn.optimize onnxruntime --rounds 5 --steps
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ENGINES = ("fastconv", "nn.optimize", "torch", "torch_cl", "onnxruntime", "openvino")
# networks that fastconv.nn.models has, for the nn.optimize engine
MODELS = ("resnet18", "resnet50", "mobilenet_v2")


def _nn_model(spec):
    """The spec's network as a ``fastconv.nn.models`` model with the same weights: each
    convolution's weight, and its bias as the BatchNorm after it (mean 0, variance
    ``1 - eps``, scale 1, shift the bias), so ``nn.optimize`` folds back the spec's
    weights (to float rounding)."""
    import numpy as np

    from fastconv import networks, nn
    model = getattr(nn.models, spec["name"])()
    state = model.state_dict()
    conv_keys = [k for k, v in state.items() if v.ndim == 4]
    layers = networks.convs(spec)
    assert len(conv_keys) == len(layers), (len(conv_keys), len(layers))
    for key, layer in zip(conv_keys, layers):
        assert state[key].shape == layer["w"].shape, (key, layer["name"])
        module = key[:-len(".weight")]
        head, _, last = module.rpartition(".")
        bn = (f"{head}.{int(last) + 1}" if last.isdigit()
              else (head + "." if head else "") + last.replace("conv", "bn"))
        state[key] = layer["w"]
        eps = np.float32(1e-5)
        state[f"{bn}.weight"] = np.ones_like(layer["b"])
        state[f"{bn}.bias"] = layer["b"]
        state[f"{bn}.running_mean"] = np.zeros_like(layer["b"])
        state[f"{bn}.running_var"] = np.full_like(layer["b"], 1 - eps)
    fc = "classifier.1" if spec["name"] == "mobilenet_v2" else "fc"
    state[f"{fc}.weight"], state[f"{fc}.bias"] = spec["fc"]["w"], spec["fc"]["b"]
    model.load_state_dict(state)
    return model


# -- worker: one engine ------------------------------------------------------------------

def _serve(engine):
    import numpy as np

    import fastconv  # noqa: F401  (first: it sets the OpenMP/OpenBLAS variables)
    from fastconv import networks

    runners = {}

    def runner(name, threads):
        key = (name, threads)
        if key in runners:
            return runners[key]
        spec = networks.build(name)
        if engine == "fastconv":
            fastconv.set_num_threads(threads)
            fn = networks.fastconv_forward(spec)
        elif engine == "nn.optimize":
            from fastconv import nn
            fastconv.set_num_threads(threads)
            fn = nn.optimize(_nn_model(spec))
        elif engine in ("torch", "torch_cl"):
            import torch
            torch.set_num_threads(threads)
            module = networks.torch_module(spec)
            # torch_cl: PyTorch's channels_last memory format, the input converted in
            # the call, as fastconv's functional network converts its own
            fmt = torch.channels_last if engine == "torch_cl" else torch.contiguous_format
            module = module.to(memory_format=fmt)

            def fn(x):
                with torch.no_grad():
                    return module(torch.from_numpy(x).contiguous(memory_format=fmt)).numpy()
        else:
            path = _onnx(spec)
            if engine == "onnxruntime":
                import onnxruntime as ort
                so = ort.SessionOptions()
                so.intra_op_num_threads = threads
                so.inter_op_num_threads = 1
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                # idle workers must not spin into the next engine's turn
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

                def fn(x):
                    return session.run(None, {"x": x})[0]
                fn.profile = lambda x, rounds: _ort_profile(path, so, x, rounds)
            else:
                import openvino as ov
                compiled = ov.Core().compile_model(path, "CPU", {
                    "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
                    "PERFORMANCE_HINT": "LATENCY"})

                def fn(x):
                    return compiled(x)[0]
        runners.clear()
        runners[key] = (spec, fn)
        return runners[key]

    def _onnx(spec):
        import torch
        path = os.path.join(tempfile.gettempdir(), f"fastconv-bench-{spec['name']}.onnx")
        if not os.path.exists(path):
            module = networks.torch_module(spec)
            x = torch.zeros((1,) + spec["input"])
            tmp = f"{path}.{os.getpid()}"
            import warnings
            with warnings.catch_warnings():          # the TorchScript exporter is deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(module, (x,), tmp, dynamo=False, input_names=["x"],
                                  output_names=["y"], dynamic_axes={"x": {0: "n"}})
            os.replace(tmp, path)
        return path

    print(json.dumps({"ready": engine}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        spec, fn = runner(req["network"], req["threads"])
        x = np.random.default_rng(1).standard_normal((req["N"],) + spec["input"],
                                                     dtype=np.float32)
        if req["what"] == "output":
            print(json.dumps({"output": np.asarray(fn(x)).tolist()}), flush=True)
            continue
        if req["what"] == "steps":             # nn.optimize's steps, ONNX Runtime's nodes
            rows = fn.profile(x, req["rounds"])
            if engine == "nn.optimize":
                rows = [[r["label"], "" if r["plan"] is None else
                         f"{r['plan'].algorithm}/{r['plan'].backend}/{r['plan'].variant}",
                         r["ms"], r["repeat_ms"]] for r in rows]
            print(json.dumps({"steps": rows}), flush=True)
            continue
        if req["what"] == "layers":
            fastconv.set_num_threads(req["threads"])
            from fastconv.bench import fma_peak
            peak = fma_peak(req["threads"])
            networks.fastconv_forward(spec)(x)
            rows = {}
            for _ in range(3):
                profile = []
                networks.fastconv_forward(spec, profile)(x)
                for layer, plan, seconds, flops in profile:
                    rows.setdefault(layer, [repr(plan), flops, []])[2].append(seconds)
            print(json.dumps({"peak": peak, "layers": [
                [k, v[0], v[1], float(np.median(v[2]))] for k, v in rows.items()]}), flush=True)
            continue
        for _ in range(req.get("warmup", 2)):
            fn(x)
        calls, t0 = 0, time.perf_counter()
        while True:
            fn(x)
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= req["min_time"]:
                break
        print(json.dumps({"seconds": elapsed / calls}), flush=True)


# -- driver -------------------------------------------------------------------------------

def _ort_profile(path, so, x, rounds):
    """ONNX Runtime's own time per node (its profiler, a session of its own with the
    same options): [[node, op, input shapes -> output shape, median ms]] in the order
    they ran. The profiler adds a little time to each node."""
    import collections

    import numpy as np
    import onnxruntime as ort
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.gettempdir(), f"fastconv-ort-{os.getpid()}")
    try:
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    finally:
        so.enable_profiling = False
    for _ in range(2 + rounds):
        session.run(None, {"x": x})
    trace = session.end_profiling()
    with open(trace) as f:
        events = json.load(f)
    os.remove(trace)
    times, info = collections.defaultdict(list), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][:-len("_kernel_time")]
            times[node].append(e["dur"] / 1e3)
            shapes = [list(a.values())[0] for a in e["args"].get("input_type_shape", [])]
            out = [list(a.values())[0] for a in e["args"].get("output_type_shape", [])]
            info[node] = (e["args"].get("op_name", ""), f"{shapes[:2]} -> {out[:1]}")
    return [[node, *info[node], float(np.median(v[-rounds:]))] for node, v in times.items()]


def _available(engine):
    import importlib.util
    module = {"fastconv": "fastconv", "nn.optimize": "fastconv", "torch": "torch",
              "torch_cl": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}[engine]
    if importlib.util.find_spec(module) is None:
        return False
    # ONNX Runtime and OpenVINO run the ONNX export of the PyTorch network
    return (engine in ("fastconv", "nn.optimize", "torch", "torch_cl")
            or importlib.util.find_spec("torch") is not None)


def _start(engine):
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", engine],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    json.loads(proc.stdout.readline())
    return proc


def _ask(proc, req):
    proc.stdin.write(json.dumps(req) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"engine worker died on {req}")
    return json.loads(line)


def _print_steps(procs, name, N, threads, rounds):
    """``--steps``: nn.optimize's steps (each in the network, then repeated at once) and
    ONNX Runtime's nodes, with their sums; returns them for the JSON."""
    req = dict(network=name, N=N, threads=threads, what="steps", rounds=rounds)
    out = dict(network=name, N=N, threads=threads)
    if "nn.optimize" in procs and name in MODELS:
        rows = _ask(procs["nn.optimize"], req)["steps"]
        net, rep = sum(r[2] for r in rows), sum(r[3] for r in rows)
        print(f"\n{name} N={N}, {threads} thread(s): nn.optimize step by step, median ms "
              f"in the network / repeated at once: {net:.2f} / {rep:.2f} "
              f"(the network costs {net - rep:.2f} ms more, {net / rep - 1:.0%})")
        for label, plan, ms, again in rows:
            print(f"  {ms:8.3f} {again:8.3f}  {label[:64]:64s} {plan}")
        out["nn.optimize"] = rows
    if "onnxruntime" in procs:
        rows = _ask(procs["onnxruntime"], req)["steps"]
        print(f"\n{name} N={N}, {threads} thread(s): ONNX Runtime node by node (its "
              f"profiler), median ms: {sum(r[3] for r in rows):.2f} in all")
        for node, op, shapes, ms in rows:
            print(f"  {ms:8.3f}  {op:18s} {shapes}")
        out["onnxruntime"] = rows
    return out


def machine():
    """CPU model, vector features, cores and library versions, for every report (the
    shared harness's records, ``fastconv.bench``)."""
    from fastconv.bench import machine_info, versions
    info = machine_info()
    vers = {k: v for k, v in versions().items() if v is not None}
    for pkg in ("onnxruntime", "openvino"):
        try:
            import importlib.metadata as md
            vers[pkg] = md.version(pkg)
        except Exception:                          # not installed
            pass
    return dict(cpu=info["cpu_model"], cores=info["usable_cores"],
                features=info["cpu_flags"], versions=vers, machine=info)


def main(argv=None):
    import numpy as np
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--networks", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--pause", type=float, default=0.3,
                    help="seconds between engines, for the last one's threads to go idle")
    ap.add_argument("--layers", action="store_true", help="fastconv's per-layer breakdown")
    ap.add_argument("--steps", action="store_true",
                    help="nn.optimize step by step, in the network and repeated at once, and "
                         "ONNX Runtime node by node (its profiler)")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)
    if args.serve:
        return _serve(args.serve)
    engines = [e for e in args.engines if _available(e)]
    info = machine()
    print(f"CPU: {info['cpu']} ({info['cores']} cores; {' '.join(info['features'])})")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    skipped = [e for e in args.engines if e not in engines]
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)}")
    procs = {e: _start(e) for e in engines}
    results = []
    try:
        for threads in args.threads:
            print(f"\nfloat32, {threads} thread(s), median ms over {args.rounds} rounds "
                  f"(ratio: engine time / {engines[0]} time)")
            print(f"{'network':16s} {'N':>3s} " + " ".join(f"{e:>18s}" for e in engines))
            for name in args.networks:
                for N in args.batch:
                    base = dict(network=name, N=N, threads=threads)
                    here = [e for e in engines if e != "nn.optimize" or name in MODELS]
                    ref = here[0]                   # outputs and ratios against the first engine
                    want = np.array(_ask(procs[ref], dict(base, what="output"))["output"])
                    errors = {}
                    for e in here[1:]:
                        got = np.array(_ask(procs[e], dict(base, what="output"))["output"])
                        errors[e] = float(np.abs(got - want).max() / np.abs(want).max())
                    times = {e: [] for e in here}
                    for r in range(args.rounds):
                        order = here[r % len(here):] + here[:r % len(here)]
                        for e in order:
                            times[e].append(_ask(procs[e], dict(base, what="time",
                                                                min_time=args.min_time))["seconds"])
                            time.sleep(args.pause)      # the last engine's threads go idle
                    t = {e: np.array(v) for e, v in times.items()}
                    ratio = {e: float(np.median(t[e] / t[ref])) for e in here}
                    cells = " ".join(f"{np.median(t[e]) * 1e3:9.2f} ({ratio[e]:5.2f})"
                                     if e in t else f"{'-':>18s}" for e in engines)
                    print(f"{name:16s} {N:3d} {cells}", flush=True)
                    results.append(dict(base, median_ms={e: float(np.median(t[e]) * 1e3)
                                                         for e in here},
                                        ratio_to=ref, ratio=ratio, max_rel_error=errors,
                                        times=times))
                    bad = {e: v for e, v in errors.items() if v > 1e-4}
                    if bad:
                        print(f"  output differs from {ref}'s: {bad}")
            if args.layers and "fastconv" in procs:
                for name in args.networks:
                    for N in args.batch:
                        rep = _ask(procs["fastconv"], dict(network=name, N=N, threads=threads,
                                                           what="layers"))
                        print(f"\n{name} N={N}, {threads} thread(s): fastconv per layer "
                              f"(FMA peak {rep['peak']:.0f} GFLOP/s measured now)")
                        total = sum(row[3] for row in rep["layers"])
                        for layer, plan, flops, seconds in rep["layers"]:
                            gf = flops / seconds / 1e9
                            print(f"  {layer:24s} {seconds * 1e3:8.3f} ms {seconds / total:6.1%} "
                                  f"{gf:7.1f} GFLOP/s {gf / rep['peak']:6.1%}  {plan}")
                        results.append(dict(network=name, N=N, threads=threads,
                                            layers=rep["layers"], peak=rep["peak"]))
            if args.steps:
                for name in args.networks:
                    for N in args.batch:
                        results.append(_print_steps(procs, name, N, threads, args.rounds))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=info, results=results), f, indent=1)


if __name__ == "__main__":
    main()
