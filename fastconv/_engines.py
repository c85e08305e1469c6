"""Whole models timed against PyTorch eager, ONNX Runtime and OpenVINO, each engine in a
process of its own, interleaved round by round: ``fastconv bench --model resnet18`` and
``benchmarks/bench_networks.py``.

Engines: ``fastconv`` (``fastconv.networks.fastconv_forward``: the functional API,
weights prepared once, channels last, epilogues fused), ``nn.optimize``
(``fastconv.nn.optimize(fastconv.nn.models.<network>())`` with the same weights,
loaded by ``load_state_dict``), ``torch`` (PyTorch eager as a user writes it, NCHW),
``torch_cl`` (the same in PyTorch's ``channels_last`` memory format), ``onnxruntime``
and ``openvino`` (the ONNX export of the PyTorch network; OpenVINO with
``INFERENCE_PRECISION_HINT=f32``, since it defaults to bf16 on CPUs with AMX). The
networks are ``fastconv.networks``' (BatchNorm folded, random He-init weights,
float32). PyTorch, ONNX Runtime and OpenVINO are optional: an engine that is not
installed is skipped.

Each engine's worker (``python -m fastconv._engines ENGINE``) stays alive for the whole
run; the driver asks them in turn to time one forward pass (rotating which goes first,
with a pause between engines so that no engine's idle threads spin into the next one's
turn; ONNX Runtime's spinning is off), round by round, and reports each engine's
median and the median per-round ratio engine time / the first engine's time. Outputs
are checked against the first engine's once per network.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

ENGINES = ("fastconv", "nn.optimize", "torch", "torch_cl", "onnxruntime", "openvino")
# networks that fastconv.nn.models has, for the nn.optimize engine
MODELS = ("resnet18", "resnet50", "mobilenet_v2")


def nn_model(spec):
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

def serve(engine):
    """The worker of ``engine``: answers the JSON requests read on stdin, one per line
    (``what``: "output", "time", "steps" or "layers", for ``network``, ``N`` and
    ``threads``), with one JSON line each on stdout."""
    import numpy as np

    import fastconv  # noqa: F401  (first: it sets the OpenMP/OpenBLAS variables)
    from fastconv import networks
    from fastconv.bench import steady_heap

    steady_heap()                   # every engine's allocator in the same state

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
            fn = nn.optimize(nn_model(spec))
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
                fn.profile = lambda x, rounds: ort_profile(path, so, x, rounds)
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
            print(json.dumps(_layer_times(engine, spec, x, req)), flush=True)
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


#: the "layers" request's profiled networks, built and warmed once per (engine, network,
#: N, threads): (forward, its profile list, the FMA peak measured when it was built)
_PROFILED = {}


def _layer_times(engine, spec, x, req):
    """The "layers" request: each convolution's seconds in ``rounds`` (default 1)
    forward passes of one profiled network, built and warmed on the first request (so
    no layer's first-call work, its plan or prepared weight's layout, is timed), in
    the network's order; the driver interleaves such requests with the other engine's.
    fastconv: {"peak": FMA GFLOP/s measured when built, "layers": [[layer, plan, flops,
    [seconds per pass]]]}; torch: {"layers": [[layer, [seconds per pass]]]}, each layer
    with the residual add and activation after it, as fastconv's fused call."""
    import fastconv
    from fastconv import networks
    key = (engine, spec["name"], len(x), req["threads"])
    if key not in _PROFILED:
        profile, peak = [], None
        if engine == "fastconv":
            from fastconv.bench import fma_peak
            fastconv.set_num_threads(req["threads"])
            peak = fma_peak(req["threads"])
            forward = networks.fastconv_forward(spec, profile)
        elif engine == "torch":
            import torch
            torch.set_num_threads(req["threads"])
            module = networks.torch_module(spec, profile)

            def forward(x):
                with torch.no_grad():
                    return module(torch.from_numpy(x))
        else:
            raise ValueError(f"no per-layer times for engine {engine}")
        for _ in range(2):
            forward(x)
        _PROFILED.clear()
        _PROFILED[key] = forward, profile, peak
    forward, profile, peak = _PROFILED[key]
    times, rows = {}, {}
    for _ in range(req.get("rounds", 1)):
        profile.clear()
        forward(x)
        for row in profile:                 # fastconv (layer, plan, s, flops); torch (layer, s)
            times.setdefault(row[0], []).append(row[2] if engine == "fastconv" else row[1])
            rows[row[0]] = row
    if engine == "torch":
        return {"layers": [[k, v] for k, v in times.items()]}
    return {"peak": peak, "layers": [[k, repr(rows[k][1]), rows[k][3], v]
                                     for k, v in times.items()]}


# -- driver ---------------------------------------------------------------------------------

def ort_profile(path, so, x, rounds):
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


def available(engine):
    import importlib.util
    module = {"fastconv": "fastconv", "nn.optimize": "fastconv", "torch": "torch",
              "torch_cl": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}[engine]
    if importlib.util.find_spec(module) is None:
        return False
    # ONNX Runtime and OpenVINO run the ONNX export of the PyTorch network
    return (engine in ("fastconv", "nn.optimize", "torch", "torch_cl")
            or importlib.util.find_spec("torch") is not None)


def start(engine):
    # the worker imports this fastconv, wherever the caller's came from
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    proc = subprocess.Popen([sys.executable, "-m", "fastconv._engines", engine],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=path))
    json.loads(proc.stdout.readline())
    return proc


def stop(proc):
    """End a worker from :func:`start`: its input closed, its exit awaited, its output
    pipe closed."""
    proc.stdin.close()
    proc.wait()
    proc.stdout.close()


def ask(proc, req):
    proc.stdin.write(json.dumps(req) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"engine worker died on {req}")
    return json.loads(line)


def compare(procs, engines, networks, batches, threads, rounds, min_time=0.2, pause=0.3,
            on_row=None, progress=False):
    """Time ``networks`` at each batch size and thread count on the running ``engines``
    (their workers ``procs``, from :func:`start`), interleaved for ``rounds`` rounds.
    Returns one dict per (threads, network, N): each engine's median ms, its median
    per-round ratio to the first engine's time, the outputs' largest difference from
    the first engine's (relative to its largest |output|) and the times. ``on_row(row)``
    is called as each row is done; ``progress``: a tqdm bar over the timings."""
    import numpy as np
    from tqdm.auto import tqdm
    cases = [(t, name, N) for t in threads for name in networks for N in batches]
    total = sum(rounds * len([e for e in engines if e != "nn.optimize" or name in MODELS])
                for _, name, _ in cases)
    results = []
    with tqdm(total=total, desc="fastconv bench", unit="run", disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for t, name, N in cases:
            base = dict(network=name, N=N, threads=t)
            here = [e for e in engines if e != "nn.optimize" or name in MODELS]
            ref = here[0]                       # outputs and ratios against the first engine
            bar.set_description(f"{name} N={N}, {t} thread(s)")
            want = np.array(ask(procs[ref], dict(base, what="output"))["output"])
            errors = {}
            for e in here[1:]:
                got = np.array(ask(procs[e], dict(base, what="output"))["output"])
                errors[e] = float(np.abs(got - want).max() / np.abs(want).max())
            times = {e: [] for e in here}
            for r in range(rounds):
                for e in here[r % len(here):] + here[:r % len(here)]:
                    times[e].append(ask(procs[e], dict(base, what="time",
                                                       min_time=min_time))["seconds"])
                    bar.update()
                    time.sleep(pause)               # the last engine's threads go idle
            a = {e: np.array(v) for e, v in times.items()}
            row = dict(base, median_ms={e: float(np.median(a[e]) * 1e3) for e in here},
                       ratio_to=ref, ratio={e: float(np.median(a[e] / a[ref])) for e in here},
                       max_rel_error=errors, times=times)
            results.append(row)
            if on_row is not None:
                on_row(row)
    return results


def format_row(row, engines):
    """One table line: the network, N, and each engine's median ms (ratio)."""
    cells = " ".join(f"{row['median_ms'][e]:9.2f} ({row['ratio'][e]:5.2f})"
                     if e in row["median_ms"] else f"{'-':>18s}" for e in engines)
    return f"{row['network']:16s} {row['N']:3d} {cells}"


def format_header(engines, threads, rounds):
    return (f"float32, {threads} thread(s), median ms over {rounds} rounds (ratio: engine "
            f"time / {engines[0]} time)\n{'network':16s} {'N':>3s} "
            + " ".join(f"{e:>18s}" for e in engines))


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


def run_model(args):
    """``fastconv bench --model NAME`` (parsed ``args`` of ``fastconv.bench``): the
    model's table, per thread count, of each installed engine's median ms and ratio to
    ``nn.optimize``'s; a progress bar unless ``--no-progress``; ``--json`` writes the
    machine and every timing. Returns the exit status."""
    import fastconv
    wanted = args.engines or ["nn.optimize", "torch", "onnxruntime", "openvino"]
    engines = [e for e in wanted if available(e)]
    threads = args.threads or [fastconv.get_num_threads()]
    batches = args.batch or [1, 8]
    rounds = args.rounds or 5
    min_time = 0.2 if args.min_time is None else args.min_time
    info = machine()
    print(f"CPU: {info['cpu']} ({info['cores']} cores; {' '.join(info['features'])})")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    skipped = [e for e in wanted if e not in engines]
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)}")
    procs = {e: start(e) for e in engines}
    try:
        results = compare(procs, engines, [args.model], batches, threads, rounds, min_time,
                          progress=not args.no_progress)
    finally:
        for proc in procs.values():
            stop(proc)
    for t in threads:
        print("\n" + format_header(engines, t, rounds))
        for row in results:
            if row["threads"] == t:
                print(format_row(row, engines))
    bad = [(row["N"], row["threads"], e, v) for row in results
           for e, v in row["max_rel_error"].items() if v > 1e-4]
    for N, t, e, v in bad:
        print(f"N={N}, {t} thread(s): {e}'s output differs from {engines[0]}'s by {v:.1e} "
              f"of the largest |output|")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=info, model=args.model, results=results), f, indent=1)
        print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    serve(sys.argv[1])
