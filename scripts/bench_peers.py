"""The integer engine against what a user would run instead on the same CPU: speed, and accuracy on GLUE dev.

    pip install -e ".[peers]"
    python scripts/bench_peers.py [--size roberta-base|minilm] [--layers N] [--grid] [--rounds 7]   # random weights
    python scripts/bench_peers.py --profile [--batch 8 --seq 128]   # time per layer stage, OpenVINO int8 and ours
    python scripts/bench_peers.py --glue rte --runs multirun/rte/minilm/qat-none-seed{1,2,3}   # dev accuracy

Speed: one set of random roberta-base weights in transformers fp32, torch bf16 (`model.bfloat16()`), ONNX Runtime
int8 (`quantize_dynamic` of the BERT-optimized graph), OpenVINO at its default precision, OpenVINO int8 (NNCF,
`ModelType.TRANSFORMER`), our fp32 and our integer engine; at 8 x 128 and 1 x 128 (`--grid`: the paper's latency
grid). All are timed in one process, in rounds that call each implementation in turn (`_bench.interleaved`);
the ratios to the engine are medians of the per-round ratios. Prints the instructions each one ran on
(OpenVINO's executed kernels, our `kernels.cpu_isa()`), a markdown table, and appends CSV rows.

Accuracy (`--glue`): for each run directory, its fine-tuned fp32 model as the peers get it (a transformers
RoBERTa with the same weights: same logits), quantized by each peer (NNCF calibrated on
`--calibration-samples` training examples, as our `path=ptq`), beside our integer engines (the run's QAT
engine, and the PTQ engine of the run `ptq-<...>` beside it where there is one): the task's dev metric and the
share of dev predictions equal to fp32's (regression: the correlation with fp32's scores), per run and as
mean +- std over the runs. Written to `<run>/peers/<task>-dev.json`.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import transformers
from transformers import DataCollatorWithPadding

import ibert
import kernels
from ibert import atomic, glue
from ibert.checkpoints import load_pretrained
from ibert.engine import convert_to_integer, load_integer
from ibert.inference import encode, examples_of, load_tokenizer, predictions
from ibert.scripts._bench import append_rows, device_name, interleaved, print_table
from ibert.scripts.bench_model import calibrate, make_inputs, roberta_base

Inputs = dict[str, torch.Tensor]
Run = Callable[[Inputs], np.ndarray]  # inputs -> the model's first output (hidden states or logits)
NAMES = ("input_ids", "attention_mask", "token_type_ids")


def roberta_twin(model: ibert.IBertModel | ibert.IBertForSequenceClassification) -> torch.nn.Module:
    """A transformers RoBERTa (SDPA attention) holding our fp32 model's weights: the same architecture, the same
    outputs."""
    cfg = model.config
    rc = transformers.RobertaConfig(**{k: getattr(cfg, k) for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings", "type_vocab_size", "pad_token_id", "layer_norm_eps", "num_labels")},
        attn_implementation="sdpa")
    if isinstance(model, ibert.IBertModel):
        twin, state = transformers.RobertaModel(rc, add_pooling_layer=False), model.state_dict()
    else:
        twin = transformers.RobertaForSequenceClassification(rc)
        state = {("roberta." + k[len("ibert."):] if k.startswith("ibert.") else k): v
                 for k, v in model.state_dict().items()}
    missing = twin.load_state_dict(state, strict=False).missing_keys
    if missing:
        raise ValueError(f"the RoBERTa twin lacks weights: {missing[:5]}")
    return twin.eval()


def torch_run(model: torch.nn.Module) -> Run:
    @torch.no_grad()
    def run(x: Inputs) -> np.ndarray:
        return model(**x)[0].float().numpy()
    return run


class _Positional(torch.nn.Module):
    """`model(**inputs)[0]` with the inputs positional: transformers' forward wrappers clash with the legacy
    exporter's tracing of keyword inputs ("multiple values for argument 'use_cache'")."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs)))[0]


def onnxruntime_int8(model: torch.nn.Module, example: Inputs, workdir: Path, threads: int) -> tuple[Run, str]:
    """ONNX Runtime's dynamic int8 of the BERT-optimized graph, as its docs advise for transformers. The legacy
    exporter on eager attention is the graph its attention fusion recognises."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    raw, opt, q8 = (str(workdir / f) for f in ("model.onnx", "model.opt.onnx", "model.int8.onnx"))
    names = [n for n in NAMES if n in example]
    torch.onnx.export(_Positional(model, names), tuple(example[n] for n in names), raw, input_names=names,
                      output_names=["out"],
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in names}, opset_version=17, dynamo=False)
    optimized = optimize_model(raw, model_type="bert", num_heads=model.config.num_attention_heads,
                               hidden_size=model.config.hidden_size)
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    optimized.save_model_to_file(opt)
    quantize_dynamic(opt, q8, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(q8, so, providers=["CPUExecutionProvider"])

    def run(x: Inputs) -> np.ndarray:
        return session.run(None, {n: x[n].numpy() for n in names})[0]
    ops = Counter(n.op_type for n in onnx.load(q8).graph.node)
    isa = (f"MLAS (picks its kernels from CPUID); fused {fused}; "
           f"{ops.get('MatMulInteger', 0) + ops.get('DynamicQuantizeMatMul', 0)} int8 MatMuls")
    return run, isa


def openvino_compiled(model: torch.nn.Module, example: Inputs, calibration: list[Inputs] | None, threads: int,
                      perf_count: bool = False):
    """`model` compiled by OpenVINO for the CPU (an `ov.CompiledModel`): at its default precision, or int8 from
    NNCF's post-training quantization (calibrated on `calibration`, `ModelType.TRANSFORMER`: softmax, LayerNorm and
    GELU stay in floating point). `perf_count`: with per-node timings (`get_profiling_info`)."""
    import openvino as ov

    names = [n for n in NAMES if n in example]
    ov_model = ov.convert_model(model, example_input={n: example[n] for n in names})
    if calibration is not None:
        import nncf

        data = nncf.Dataset([{n: c[n].numpy() for n in names} for c in calibration])
        ov_model = nncf.quantize(ov_model, data, model_type=nncf.ModelType.TRANSFORMER,
                                 subset_size=len(calibration))
    return ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERF_COUNT": perf_count})


def openvino(model: torch.nn.Module, example: Inputs, calibration: list[Inputs] | None,
             threads: int) -> tuple[Run, str]:
    """OpenVINO on the CPU (`openvino_compiled`) and what it runs on."""
    names = [n for n in NAMES if n in example]
    compiled = openvino_compiled(model, example, calibration, threads)

    def run(x: Inputs) -> np.ndarray:
        return compiled({n: x[n].numpy() for n in names})[0]
    run(example)
    kinds = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) in ("FullyConnected", "MatMul"):
            kinds[f"{rt['primitiveType'].astype(str)} {rt['runtimePrecision'].astype(str)}"] += 1
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    return run, f"inference precision {precision}; matmuls: {dict(kinds)}"


def peers(twin: torch.nn.Module, example: Inputs, calibration: list[Inputs], workdir: Path,
          threads: int) -> dict[str, tuple[Run, str]]:
    """Every peer implementation of `twin` (a transformers RoBERTa): {name: (run, what it runs on)}."""
    eager = copy.deepcopy(twin)
    eager.config._attn_implementation = "eager"
    return {
        "transformers fp32": (torch_run(twin), "oneDNN/MKL fp32"),
        "torch bf16": (torch_run(copy.deepcopy(twin).bfloat16()), "oneDNN bf16"),
        "ONNX Runtime int8": onnxruntime_int8(eager, example, workdir, threads),
        "OpenVINO default": openvino(twin, example, None, threads),
        "OpenVINO int8 (NNCF)": openvino(twin, example, calibration, threads),
    }


def random_models(config: dict, vocab: int) -> tuple[ibert.IBertModel, torch.nn.Module, torch.nn.Module]:
    """One set of random weights (seed 0) of `config`'s shape as our fp32 model, our integer engine (calibrated on
    8 x 128 random tokens below `vocab`) and the transformers RoBERTa twin the peers get."""
    torch.manual_seed(0)
    ours_fp32 = ibert.IBertModel(ibert.IBertConfig(**config)).eval()
    fake = ibert.IBertModel(ibert.IBertConfig(**config, quant_mode=True))
    fake.load_state_dict(ours_fp32.state_dict(), strict=False)
    calibrate(fake, make_inputs(8, 128, "cpu", vocab))
    return ours_fp32, convert_to_integer(fake), roberta_twin(ours_fp32)


def model_shape(args: argparse.Namespace) -> tuple[dict, int, str]:
    """The model config of `--size` / `--layers`, the token ids to draw inputs below, and its label."""
    config = dict(**roberta_base(args.layers or 12), type_vocab_size=1, pad_token_id=1)
    if args.size == "minilm":  # all-MiniLM-L6-v2's shape
        config.update(vocab_size=30522, hidden_size=384, num_hidden_layers=args.layers or 6, intermediate_size=1536)
    return config, min(config["vocab_size"], 50000), f"{args.size} size, {config['num_hidden_layers']} layers"


def latency(args: argparse.Namespace) -> None:
    threads = torch.get_num_threads()
    dev = device_name("cpu")
    config, vocab, size = model_shape(args)
    print(f"device: {dev}; our integer ops: {kernels.cpu_isa()}; {size}")
    ours_fp32, engine, twin = random_models(config, vocab)
    with tempfile.TemporaryDirectory() as tmp:
        impls = peers(twin, make_inputs(2, 16, "cpu", vocab), [make_inputs(2, 128, "cpu", vocab) for _ in range(4)],
                      Path(tmp), threads)
    impls["ours fp32"] = (torch_run(ours_fp32), "oneDNN/MKL fp32")
    impls["ours integer engine"] = (torch_run(engine), kernels.cpu_isa())
    for name, (_, isa) in impls.items():
        print(f"{name}: {isa}")
    shapes = [(b, s) for s in (128, 256) for b in (1, 2, 4, 8)] if args.grid else [(8, 128), (1, 128)]
    rows = []
    for batch, seq in shapes:
        x = make_inputs(batch, seq, "cpu", vocab)
        fns = {name: (lambda run=run: run(x)) for name, (run, _) in impls.items()}
        with torch.no_grad():
            for fn in fns.values():  # first calls: compilation, caches
                fn()
            times = interleaved(fns, "cpu", rounds=args.rounds)
        engine_t = times["ours integer engine"]
        case = f"batch {batch} x seq {seq}"
        for name, t in times.items():
            ratios = [a / b for a, b in zip(t, engine_t)]
            rows.append({"case": case, "implementation": name, "ms": f"{statistics.median(t):.1f}",
                         "its time / engine's": f"{statistics.median(ratios):.2f}x",
                         "rounds": f"{min(ratios):.2f}-{max(ratios):.2f}x"})
            print(rows[-1], flush=True)
        append_rows([{"device": dev, "benchmark": "peers" if args.size == "roberta-base" else f"peers-{args.size}",
                      "case": case, "impl": r["implementation"], "ms": r["ms"],
                      "speedup": r["its time / engine's"].rstrip("x"), "note": f"rounds {r['rounds']}; "
                      f"{impls[r['implementation']][1]}"} for r in rows if r["case"] == case])
    print_table(f"peers, {size} ({dev}, {args.rounds} rounds)", rows,
                ["case", "implementation", "ms", "its time / engine's", "rounds"])


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def glue_accuracy(args: argparse.Namespace) -> None:
    task = glue.get_task(args.glue)
    threads = torch.get_num_threads()
    dev_raw = glue.load_split(task, "dev", args.glue_dir)
    train_raw = glue.load_split(task, "train", args.glue_dir)
    labels = np.asarray(dev_raw["label"])
    per_run = []
    for run_dir in map(Path, args.runs):
        fp32 = load_pretrained(ibert.IBertForSequenceClassification, run_dir / "fp32" / "model").eval()
        tokenizer = load_tokenizer(run_dir / "fp32" / "model")
        collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
        batches = [collate(b) for b in _chunks(encode(examples_of(dev_raw, task), tokenizer, args.max_length),
                                               args.batch_size)]
        seed = json.loads((run_dir / "results.json").read_text()).get("seed", 0) if (
            run_dir / "results.json").is_file() else 0
        chosen = np.random.default_rng(seed).permutation(len(train_raw["label"]))[:args.calibration_samples]
        train_examples = encode([examples_of(train_raw, task)[i] for i in chosen], tokenizer, args.max_length)
        calibration = [collate(b) for b in _chunks(train_examples, 1)]
        twin = roberta_twin(fp32)
        with torch.no_grad():
            gap = (fp32(**batches[0]).logits - twin(**batches[0]).logits).abs().max().item()
        print(f"{run_dir}: fp32 model and its RoBERTa twin differ by at most {gap:.2e} in the logits", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            impls = {"ours fp32": (torch_run(fp32), "fp32"),
                     **peers(twin, batches[0], calibration, Path(tmp), threads)}
        del impls["transformers fp32"]  # the same model as ours fp32
        for name, sub in (("ours integer-only (QAT)", run_dir / "integer"),
                          ("ours integer-only (PTQ)", run_dir.parent / run_dir.name.replace("qat-", "ptq-", 1)
                           / "integer")):
            if (sub / "config.json").is_file():
                engine = load_integer(sub).eval()
                impls[name] = (torch_run(engine), kernels.cpu_isa())
        preds = {}
        for name, (run, _) in impls.items():
            logits = torch.from_numpy(np.concatenate([run(dict(b)) for b in batches]))
            preds[name] = predictions(task, logits)
        base = preds["ours fp32"]
        result = {"task": task.name, "run": str(run_dir), "seed": seed, "calibration_samples": args.calibration_samples,
                  "cpu": device_name("cpu"), "implementations": {
                      name: {"metrics": glue.compute_metrics(task, p, labels),
                             "agreement_with_fp32": glue.agreement(task, p, base),
                             "runs_on": impls[name][1]} for name, p in preds.items()}}
        out = run_dir / "peers" / f"{task.name}-dev.json"
        out.parent.mkdir(exist_ok=True)
        atomic.write_file(out, lambda p: Path(p).write_text(json.dumps(result, indent=2)))
        per_run.append(result)
        print(f"written to {out}", flush=True)
    metric = task.main_metric
    agree_column = "100 x Pearson r with fp32" if task.labels is None else "predictions equal to fp32's (%)"
    names = list(per_run[0]["implementations"])
    rows = []
    for name in names:
        got = [r["implementations"][name] for r in per_run if name in r["implementations"]]
        rows.append({"implementation": name, f"dev {metric}": _mean_std([g["metrics"][metric] for g in got]),
                     agree_column: _mean_std([g["agreement_with_fp32"] for g in got]),
                     "runs": len(got)})
    print_table(f"{task.name} dev, {len(per_run)} fine-tuned fp32 models (mean ± std over runs; "
                f"{device_name('cpu')})", rows, list(rows[0]))


# A node of OpenVINO's runtime graph of the twin -> the engine stage it belongs to (by the name of the transformers
# module it came from; the first pattern that matches wins).
OV_STAGES = (("attention.self.query", "linear (QKV)"), ("attention.self.key", "linear (QKV)"),
             ("attention.self.value", "linear (QKV)"), ("attention.self", "attention"),
             ("attention.output.dense", "linear (attention output, residual)"),
             ("attention.output.LayerNorm", "layernorm"), ("intermediate", "linear (FFN in, i-GELU)"),
             ("output.dense", "linear (FFN out, residual)"), ("output.LayerNorm", "layernorm"),
             ("output", "linear (FFN out, residual)"), ("attention.output", "linear (attention output, residual)"))


def ov_stage(node_name: str) -> str:
    if ".layer." not in node_name:
        return "outside the encoder layers"
    return next((stage for pattern, stage in OV_STAGES if pattern in node_name), "other, in the layers")


def profile(args: argparse.Namespace) -> None:
    """Where the time of one forward goes, per encoder-layer stage: OpenVINO int8 (its per-node profiling
    counters, with the kernels that ran) beside our engine (the torch profiler's ranges of `encoder_layer_cpp`)."""
    threads, dev = torch.get_num_threads(), device_name("cpu")
    config, vocab, size = model_shape(args)
    layers = config["num_hidden_layers"]
    _, engine, twin = random_models(config, vocab)
    compiled = openvino_compiled(twin, make_inputs(2, 16, "cpu", vocab),
                                 [make_inputs(2, 128, "cpu", vocab) for _ in range(4)], threads, perf_count=True)
    x = make_inputs(args.batch, args.seq, "cpu", vocab)
    request, feed = compiled.create_infer_request(), {n: x[n].numpy() for n in NAMES if n in x}
    ov_ms, ov_kernels = Counter(), {}
    for i in range(args.rounds + 1):  # the first: warm-up
        request.infer(feed)
        for node in request.get_profiling_info():
            if i and node.status.name == "EXECUTED":
                stage = ov_stage(node.node_name)
                ov_ms[stage] += node.real_time.total_seconds() * 1000 / args.rounds
                ov_kernels.setdefault(stage, Counter())[node.exec_type] += 1
    with torch.no_grad():
        engine(**x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(args.rounds):
                engine(**x)
    ours_ms = {e.key: e.cpu_time_total / 1000 / args.rounds for e in prof.key_averages()}
    stages = list(dict.fromkeys(stage for _, stage in OV_STAGES))
    rows = []
    for stage in stages + ["other, in the layers", "outside the encoder layers"]:
        ours = ours_ms.get(stage)
        kinds = ov_kernels.get(stage, Counter())
        rows.append({"stage": stage, "ours ms / layer": f"{ours / layers:.2f}" if ours else "",
                     "OpenVINO int8 ms / layer": f"{ov_ms[stage] / layers:.2f}" if stage in ov_ms else "",
                     "OpenVINO kernels (nodes a forward)": ", ".join(f"{k} x{v // args.rounds}"
                                                                     for k, v in kinds.most_common(4))})
    total = ours_ms.get("ibert::encoder_layer_cpp", 0.0)
    rows.append({"stage": "layer (ours: the whole op)", "ours ms / layer": f"{total / layers:.2f}",
                 "OpenVINO int8 ms / layer": f"{sum(v for k, v in ov_ms.items() if 'outside' not in k) / layers:.2f}",
                 "OpenVINO kernels (nodes a forward)": ""})
    print_table(f"time per encoder layer, batch {args.batch} x seq {args.seq}, {size} ({dev}; "
                f"ours {kernels.cpu_isa()}; {args.rounds} forwards)", rows, list(rows[0]))


def _chunks(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["roberta-base", "minilm"], default="roberta-base")
    p.add_argument("--layers", type=int, help="default: the size's own (12, 6)")
    p.add_argument("--grid", action="store_true", help="the paper's latency grid (seq 128/256 x batch 1/2/4/8)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--profile", action="store_true",
                   help="time per encoder-layer stage, OpenVINO int8 beside our engine, at --batch x --seq")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--glue", metavar="TASK", help="the accuracy variant on this task's dev set")
    p.add_argument("--runs", nargs="+", default=[], help="run directories (with fp32/model) for --glue")
    p.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"), help="glue_data/ folder (default $GLUE_DIR)")
    p.add_argument("--calibration-samples", type=int, default=300)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    kernels.set_compile(True)
    if args.glue:
        if not args.runs:
            p.error("--glue needs --runs")
        glue_accuracy(args)
    elif args.profile:
        profile(args)
    else:
        latency(args)


if __name__ == "__main__":
    main()
