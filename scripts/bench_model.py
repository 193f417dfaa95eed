"""Model benchmark at roberta-base size (random weights), one process, each path measured the same way.

    python scripts/bench_model.py [--batch 8 --seq 128] [--layers 12] [--no-grid] [--no-train] [--profile]
                                  [--blockings] [--isas]
Prints: forward times of our fp32, transformers' IBert fp32 and quant_mode=True, our fake-quant, our integer
engine, with ratios to our fp32; the fp32 / engine ratio again over back-to-back pairs (robust to a host whose
speed drifts); with --blockings the engine on the C++ kernels' default blockings against this CPU's tuned ones
(kernels/tuned, scripts/autotune.py --kernels cpu_linear), in pairs; with --isas the engine on this CPU's best
instruction set (AMX-INT8, AVX-512 VNNI, AVX2) against each other one it has, in pairs (the same integers checked);
a training step fp32 vs fake-quant; the paper's latency grid (sequence 128/256 x batch 1/2/4/8), fp32 vs integer
engine, also in pairs. Figures are appended to benchmarks/results.csv.
"""
from __future__ import annotations

import argparse
import os

import torch
import transformers

import ibert
import kernels
from ibert.scripts._bench import append_rows, device_name, measure, paired, print_table
from ibert.engine import convert_to_integer


def roberta_base(layers: int, **kw) -> dict:
    return dict(vocab_size=50265, hidden_size=768, num_hidden_layers=layers, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=514, **kw)


def make_inputs(batch: int, seq: int, device: str, vocab: int = 50000):
    g = torch.Generator().manual_seed(0)
    return dict(input_ids=torch.randint(3, vocab, (batch, seq), generator=g).to(device),
                attention_mask=torch.ones(batch, seq, dtype=torch.long, device=device))


def calibrate(model, inputs) -> None:
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(**inputs)
    model.eval()


def blockings_pairs(engine, inputs: dict, case: str, dev_name: str) -> None:
    """The engine's forward on the C++ linear kernel's default blockings against this CPU's tuned ones, in pairs."""
    from kernels._cpu import cpp_isa, cpp_ops
    from kernels.tuning import cpu_blocking_args, cpu_tuned_linear, cpu_tuned_path

    isa = cpp_isa()
    tuned = [[*size, *cpu_blocking_args(c)] for size, c in cpu_tuned_linear().get(isa, {}).items()]
    if not tuned:
        print(f"\nno tuned {isa} blockings in {cpu_tuned_path()}: nothing to compare")
        return

    def forward(entries: list) -> None:
        cpp_ops().set_linear_blocking(isa, entries)
        engine(**inputs)

    with torch.no_grad():
        pr = paired(lambda: forward([]), lambda: forward(tuned), "cpu")
    append_rows([{"device": dev_name, "benchmark": "model-forward-blockings", "case": case,
                  "impl": f"ours integer engine, tuned {isa} blockings", "ms": f"{pr['new ms']:.1f}",
                  "speedup": f"{pr['ratio']:.3f}",
                  "note": f"default blockings {pr['base ms']:.1f} ms; pair ratios {pr['min']:.2f}-{pr['max']:.2f}"}])
    print(f"\nengine, default / tuned {isa} blockings over {pr['pairs']} pairs: median {pr['ratio']:.3f}x (pairs "
          f"{pr['min']:.3f}x-{pr['max']:.3f}x; default {pr['base ms']:.1f} ms, tuned {pr['new ms']:.1f} ms)")


def isa_pairs(engine, inputs: dict, case: str, dev_name: str) -> None:
    """The engine's forward on this CPU's best instruction set against each other one it has (IBERT_CPU_ISA), in
    back-to-back pairs: the same integers, the speed of each kernel set."""
    from kernels._cpu import cpp_extension

    module = cpp_extension()
    isas = [isa for isa in (module.isas() if module else []) if isa != "none"]
    previous = os.environ.get("IBERT_CPU_ISA")

    def forward(isa: str):
        os.environ["IBERT_CPU_ISA"] = isa
        return engine(**inputs)

    try:
        with torch.no_grad():
            for other in isas[1:]:
                if not torch.equal(forward(isas[0])[0], forward(other)[0]):
                    raise SystemExit(f"the engine's integers differ between {isas[0]} and {other}")
                pr = paired(lambda: forward(other), lambda: forward(isas[0]), "cpu")
                append_rows([{"device": dev_name, "benchmark": "model-forward-isa", "case": case,
                              "impl": f"ours integer engine, {isas[0]}", "ms": f"{pr['new ms']:.1f}",
                              "speedup": f"{pr['ratio']:.3f}",
                              "note": f"{other} {pr['base ms']:.1f} ms; pair ratios {pr['min']:.2f}-{pr['max']:.2f}"}])
                print(f"\nengine, {other} / {isas[0]} over {pr['pairs']} pairs: median {pr['ratio']:.2f}x (pairs "
                      f"{pr['min']:.2f}x-{pr['max']:.2f}x; {other} {pr['base ms']:.1f} ms, {isas[0]} {pr['new ms']:.1f} ms; "
                      f"same integers)")
    finally:
        if previous is None:
            os.environ.pop("IBERT_CPU_ISA", None)
        else:
            os.environ["IBERT_CPU_ISA"] = previous


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-grid", action="store_true")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--profile", action="store_true", help="also print the integer engine's time per kernel")
    p.add_argument("--blockings", action="store_true", help="the engine on default vs tuned C++ blockings, in pairs")
    p.add_argument("--isas", action="store_true", help="the engine on each instruction set of this CPU, in pairs")
    args = p.parse_args()
    dev = args.device
    kernels.set_compile(dev == "cpu")
    torch.manual_seed(0)
    dev_name = device_name(dev)
    print(f"device: {dev_name}; torch {torch.__version__}; roberta-base size, {args.layers} layers")

    ours_fp32 = ibert.IBertModel(ibert.IBertConfig(**roberta_base(args.layers))).to(dev).eval()
    state = ours_fp32.state_dict()
    hf_fp32 = transformers.models.ibert.modeling_ibert.IBertModel(
        transformers.IBertConfig(**roberta_base(args.layers))).to(dev).eval()
    hf_fp32.load_state_dict(state, strict=False)
    hf_quant = transformers.models.ibert.modeling_ibert.IBertModel(
        transformers.IBertConfig(**roberta_base(args.layers), quant_mode=True)).to(dev)
    hf_quant.load_state_dict(state, strict=False)
    fake = ibert.IBertModel(ibert.IBertConfig(**roberta_base(args.layers), quant_mode=True)).to(dev)
    fake.load_state_dict(state, strict=False)

    inputs = make_inputs(args.batch, args.seq, dev)
    calibrate(hf_quant, inputs)
    calibrate(fake, inputs)
    engine = convert_to_integer(fake)
    with torch.no_grad():
        engine(**inputs)  # compiles the integer epilogues on the CPU (once)

    case = f"batch {args.batch} x seq {args.seq}"
    paths = {"ours fp32": ours_fp32, "transformers IBert fp32": hf_fp32,
             "transformers IBert quant_mode=True": hf_quant, "ours fake-quant": fake, "ours integer engine": engine}
    times = {}
    with torch.no_grad():
        for name, model in paths.items():
            times[name] = measure(lambda: model(**inputs), dev, repeats=5)
            print(f"{name}: {times[name]:.1f} ms", flush=True)
    base = times["ours fp32"]
    rows = [{"path": k, "ms": f"{v:.1f}", "fp32 time / this": f"{base / v:.2f}x"} for k, v in times.items()]
    append_rows([{"device": dev_name, "benchmark": "model-forward", "case": case, "impl": r["path"], "ms": r["ms"],
                  "speedup": f"{base / times[r['path']]:.3f}"} for r in rows])
    print_table(f"forward, {case}, {args.layers} layers ({dev_name})", rows, ["path", "ms", "fp32 time / this"])
    with torch.no_grad():
        pr = paired(lambda: ours_fp32(**inputs), lambda: engine(**inputs), dev)
    append_rows([{"device": dev_name, "benchmark": "model-forward-paired", "case": case, "impl": "ours integer engine",
                  "ms": f"{pr['new ms']:.1f}", "speedup": f"{pr['ratio']:.3f}",
                  "note": f"fp32 {pr['base ms']:.1f} ms; pair ratios {pr['min']:.2f}-{pr['max']:.2f}"}])
    print(f"\nfp32 / integer engine over {pr['pairs']} back-to-back pairs: median {pr['ratio']:.2f}x "
          f"(pairs {pr['min']:.2f}x-{pr['max']:.2f}x; fp32 {pr['base ms']:.1f} ms, engine {pr['new ms']:.1f} ms)")

    if args.blockings:
        blockings_pairs(engine, inputs, case, dev_name)
    if args.isas:
        isa_pairs(engine, inputs, case, dev_name)

    if args.profile:
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                engine(**inputs)
        print(f"\n## integer engine, time per op over 3 forwards of {case} ({args.layers} layers)\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))

    if not args.no_train:
        step_ms = {}
        for name, quant in (("fp32", False), ("fake-quant", True)):
            m = ibert.IBertForSequenceClassification(ibert.IBertConfig(**roberta_base(args.layers), quant_mode=quant,
                                                                       num_labels=2)).to(dev).train()
            m.ibert.load_state_dict(state, strict=False)
            opt = torch.optim.AdamW(m.parameters(), lr=1e-6)
            labels = torch.zeros(args.batch, dtype=torch.long, device=dev)

            def step():
                loss = m(**inputs, labels=labels).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            step_ms[name] = measure(step, dev, repeats=3, warmup=1)
            print(f"train step {name}: {step_ms[name]:.1f} ms", flush=True)
        r = step_ms["fake-quant"] / step_ms["fp32"]
        train_rows = [{"step": k, "ms": f"{v:.1f}"} for k, v in step_ms.items()]
        train_rows.append({"step": "fake-quant / fp32", "ms": f"{r:.2f}x"})
        append_rows([{"device": dev_name, "benchmark": "train-step", "case": case, "impl": k, "ms": f"{v:.1f}"}
                     for k, v in step_ms.items()])
        print_table(f"training step (forward + backward + AdamW), {case}", train_rows, ["step", "ms"])

    if not args.no_grid:
        grid = []
        for seq in (128, 256):
            for b in (1, 2, 4, 8):
                x = make_inputs(b, seq, dev)
                with torch.no_grad():
                    pr = paired(lambda: ours_fp32(**x), lambda: engine(**x), dev, pairs=5)
                t32, tint = pr["base ms"], pr["new ms"]
                grid.append({"seq": seq, "batch": b, "fp32 ms": f"{t32:.1f}", "integer ms": f"{tint:.1f}",
                             "speedup": f"{pr['ratio']:.2f}x", "pairs": f"{pr['min']:.2f}-{pr['max']:.2f}x"})
                append_rows([{"device": dev_name, "benchmark": "latency-grid", "case": f"batch {b} x seq {seq}",
                              "impl": impl, "ms": f"{t:.2f}", "speedup": f"{ratio:.3f}", "note": note}
                             for impl, t, ratio, note in (
                                 ("fp32", t32, 1.0, ""),
                                 ("integer engine", tint, pr["ratio"],
                                  f"median of {pr['pairs']} pair ratios {pr['min']:.2f}-{pr['max']:.2f}"))])
                print(grid[-1], flush=True)
        print_table(f"latency grid, fp32 vs integer engine ({dev_name})", grid, list(grid[0]))


if __name__ == "__main__":
    main()
