"""Evaluation speed of the three paths on a real GLUE dev set: what a dev pass costs a researcher.

    python scripts/bench_glue_eval.py [--task sst2] [--batch 64] [--glue-dir DIR]
all-MiniLM-L6-v2 (offline) with a classification head, calibrated on a few training-mode batches of dev
sentences (not trained: accuracy means nothing here, speed and equality do), converted to the integer engine.
Dev batches in file order, padded to their longest sentence. Prints the wall time of a full dev pass per path
(after a warm-up pass that compiles) and whether the engine's logits equal the fake-quant model's.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import transformers

import kernels
from ibert.scripts._bench import append_rows, device_name, print_table
from ibert import IBertForSequenceClassification, glue
from ibert.checkpoints import load_pretrained, offline_minilm_path
from ibert.engine import convert_to_integer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sst2")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--calibration-batches", type=int, default=4)
    p.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"))
    args = p.parse_args()
    kernels.set_compile(True)
    task = glue.get_task(args.task)
    path = offline_minilm_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    dev = glue.load_split(task, "dev", args.glue_dir)
    texts = [dev[c] for c in task.text_columns]
    batches = [tok(*[t[i:i + args.batch] for t in texts], padding=True, truncation=True, max_length=128,
                   return_tensors="pt") for i in range(0, len(texts[0]), args.batch)]
    labels = dict(num_labels=task.num_labels)
    fp32 = load_pretrained(IBertForSequenceClassification, path, **labels).eval()
    fake = load_pretrained(IBertForSequenceClassification, path, quant_mode=True, **labels).train()
    with torch.no_grad():
        for b in batches[:args.calibration_batches]:
            fake(**b)
    fake.eval()
    engine = convert_to_integer(fake)

    @torch.no_grad()
    def dev_pass(model) -> torch.Tensor:
        return torch.cat([model(**b).logits for b in batches])

    seconds, logits = {}, {}
    for name, model in (("fp32", fp32), ("fake-quant", fake), ("integer engine", engine)):
        dev_pass(model)  # warm-up: compiles the integer ops (once per shape family)
        t = time.perf_counter()
        logits[name] = dev_pass(model)
        seconds[name] = time.perf_counter() - t
        print(f"{name}: {seconds[name]:.2f} s", flush=True)
    case = f"{task.name} dev, {len(texts[0])} examples, batch {args.batch}, MiniLM"
    rows = [{"path": k, "s": f"{v:.2f}", "fp32 time / this": f"{seconds['fp32'] / v:.2f}x"} for k, v in seconds.items()]
    append_rows([{"device": device_name("cpu"), "benchmark": "glue-dev-pass", "case": case, "impl": k,
                  "ms": f"{v * 1000:.0f}", "speedup": f"{seconds['fp32'] / v:.3f}"} for k, v in seconds.items()])
    print_table(f"a full dev pass, {case} ({device_name('cpu')})", rows, ["path", "s", "fp32 time / this"])
    print(f"\nengine logits == fake-quant logits: {torch.equal(logits['integer engine'], logits['fake-quant'])}")


if __name__ == "__main__":
    main()
