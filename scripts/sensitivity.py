"""Which quantizer costs the accuracy: the fake-quant model of a fine-tuned fp32 model, its ranges calibrated as
`path=ptq` calibrates them, then, one group at a time, that group widened to `--bits` bits (all others as they are).

    python scripts/sensitivity.py --model <run>/fp32/model --task sst2 [--bits 16] [--per-layer]
        [--smoothquant-alpha 0.5] [--smoothquant-gelu-alpha 0.5] [--baseline-only]

A group is one quantizer of every layer (`encoder.layer.*.attention.self.query_activation`, ...; the softmax
output; all weights together); `--per-layer` splits each group by layer. Per row, on dev: the main metric,
the share of predictions equal to fp32's (100 x Pearson r for a regression) and the mean KL divergence of the
quantized model's class distribution from fp32's (mean squared score difference for a regression), the
least noisy of the three. Widened quantizers are simulated (fake-quant, float matmuls), not run by the engine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from transformers import DataCollatorWithPadding

from ibert import atomic, glue
from ibert.checkpoints import load_pretrained
from ibert.inference import divergence, encode, examples_of, load_tokenizer, logits_of, predictions
from ibert.modeling import IBertForSequenceClassification
from ibert.quant import IntSoftmax, QuantAct, QuantEmbedding, QuantLinear
from ibert.training import observe_ranges

WEIGHTS = "weights (all linear and embedding)"


def groups(model: torch.nn.Module, bits: int, per_layer: bool) -> dict[str, list[torch.nn.Module]]:
    """Name -> the modules (each with a `bits` attribute below `bits`) that the row widens."""
    out = defaultdict(list)
    for name, m in model.named_modules():
        if not isinstance(m, (QuantAct, IntSoftmax, QuantLinear, QuantEmbedding)) or m.bits >= bits:
            continue
        if not m.quant_mode:
            continue
        if isinstance(m, (QuantLinear, QuantEmbedding)):
            out[WEIGHTS].append(m)
        else:
            out[name if per_layer else re.sub(r"\.layer\.\d+\.", ".layer.*.", name)].append(m)
    return dict(out)


def scores(task: glue.Task, logits: torch.Tensor, fp32_logits: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    p = predictions(task, logits)
    return {task.main_metric: glue.compute_metrics(task, p, labels)[task.main_metric],
            "agreement": glue.agreement(task, p, predictions(task, fp32_logits)),
            "divergence": divergence(task, logits, fp32_logits)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a fine-tuned fp32 model directory (<run>/fp32/model)")
    p.add_argument("--task", required=True)
    p.add_argument("--bits", type=int, default=16, help="width of the group under test")
    p.add_argument("--per-layer", action="store_true", help="one row per quantizer and layer")
    p.add_argument("--smoothquant-alpha", type=float, default=None,
                   help="per-channel LayerNorm outputs smoothed at this alpha (recipe.smoothquant_alpha)")
    p.add_argument("--smoothquant-gelu-alpha", type=float, default=None,
                   help="per-channel i-GELU outputs smoothed at this alpha (recipe.smoothquant_gelu_alpha)")
    p.add_argument("--baseline-only", action="store_true", help="only the row with nothing widened")
    p.add_argument("--calibration-samples", type=int, default=300)
    p.add_argument("--seed", type=int, default=0, help="the choice of calibration examples (as a run's seed)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-dev", type=int, default=None, help="first N dev examples only")
    p.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"))
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args()
    if not 2 <= args.bits <= 16:
        raise SystemExit(f"--bits must be in [2, 16], got {args.bits}")
    task = glue.get_task(args.task)
    tokenizer = load_tokenizer(args.model)
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    dev_raw, train_raw = (glue.load_split(task, s, args.glue_dir) for s in ("dev", "train"))
    dev = encode(examples_of(dev_raw, task)[:args.max_dev], tokenizer, args.max_length)
    labels = np.asarray(dev_raw["label"][:args.max_dev])
    chosen = np.random.default_rng(args.seed).permutation(len(train_raw["label"]))[:args.calibration_samples]
    train_texts = examples_of(train_raw, task)
    calib = encode([train_texts[i] for i in chosen], tokenizer, args.max_length)

    fp32 = load_pretrained(IBertForSequenceClassification, args.model, quant_mode=False).eval()
    fp32_logits = logits_of(fp32, collate, dev, args.batch_size)
    alpha, alpha_gelu = args.smoothquant_alpha, args.smoothquant_gelu_alpha
    model = load_pretrained(IBertForSequenceClassification, args.model, quant_mode=True,
                            smoothquant=alpha is not None, smoothquant_gelu=alpha_gelu is not None)
    observe_ranges(model, (collate(calib[i:i + 32]) for i in range(0, len(calib), 32)), alpha, alpha_gelu)

    def row(name: str, widened: list[torch.nn.Module]) -> dict:
        saved = [m.bits for m in widened]
        for m in widened:
            m.bits = args.bits
        model.eval()  # empties the weights' caches, which do not key on `bits`
        r = {"widened": name, **scores(task, logits_of(model, collate, dev, args.batch_size), fp32_logits, labels)}
        for m, b in zip(widened, saved):
            m.bits = b
        model.eval()
        print(f"| {' | '.join(f'{v:.4g}' if isinstance(v, float) else v for v in r.values())} |", flush=True)
        return r

    found = {} if args.baseline_only else groups(model, args.bits, args.per_layer)
    print(f"{task.name} dev ({len(dev)}), {args.model}, ranges from {len(calib)} training examples"
          f"{'' if alpha is None else f', smoothquant alpha {alpha}'}"
          f"{'' if alpha_gelu is None else f', i-GELU smoothquant alpha {alpha_gelu}'}; "
          f"fp32 {task.main_metric} {scores(task, fp32_logits, fp32_logits, labels)[task.main_metric]:.2f}")
    print(f"| widened to {args.bits} bits | {task.main_metric} | agreement with fp32 | divergence from fp32 |")
    print("|---|---|---|---|")
    rows = [row("nothing (all as configured)", [])]
    rows += [row(name, mods) for name, mods in found.items()]
    if found:
        rows.append(row("everything", [m for mods in found.values() for m in mods]))
    if args.out:
        atomic.write_file(args.out, lambda f: Path(f).write_text(json.dumps(
            {"task": task.name, "model": str(args.model), "bits": args.bits, "calibration_samples": len(calib),
             "smoothquant_alpha": alpha, "smoothquant_gelu_alpha": alpha_gelu,
             "dev_examples": len(dev), "rows": rows}, indent=2)))


if __name__ == "__main__":
    main()
