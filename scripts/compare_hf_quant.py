"""How close is our fake-quant path to transformers' IBert quant_mode=True, on the same weights and inputs?

    python scripts/compare_hf_quant.py [--task sst2 --n 64]
Loads all-MiniLM-L6-v2 (offline) into both, calibrates each on the same training-mode batches of real GLUE
sentences, then compares, in eval mode, the final hidden states of: fp32, transformers' quant_mode=True,
our fake-quant, our integer engine (cosine similarity to fp32, max |difference|).
"""
from __future__ import annotations

import argparse
import os

import torch
import transformers

from ibert import IBertModel, glue
from ibert.checkpoints import load_pretrained, offline_minilm_path
from ibert.engine import convert_to_integer


def cosine(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    a, b = a[mask], b[mask]
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sst2")
    p.add_argument("--n", type=int, default=64, help="sentences for calibration and for the comparison")
    p.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"))
    args = p.parse_args()
    task = glue.get_task(args.task)
    path = offline_minilm_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    dev = glue.load_split(task, "dev", args.glue_dir)
    texts = [dev[c][: 2 * args.n] for c in task.text_columns]
    calib = tok(*[t[: args.n] for t in texts], padding=True, truncation=True, max_length=128, return_tensors="pt")
    test = tok(*[t[args.n:] for t in texts], padding=True, truncation=True, max_length=128, return_tensors="pt")

    fp32 = load_pretrained(IBertModel, path).eval()
    ours = load_pretrained(IBertModel, path, quant_mode=True)
    hf = transformers.models.ibert.modeling_ibert.IBertModel(
        transformers.IBertConfig(**{k: getattr(fp32.config, k) for k in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id")}, quant_mode=True))
    missing, _ = hf.load_state_dict(fp32.state_dict(), strict=False)
    assert not [k for k in missing if "integer" not in k and "scaling" not in k and "x_m" not in k and "shift" not in k]
    for model in (ours, hf):
        model.train()
        with torch.no_grad():
            for i in range(0, args.n, 16):
                model(**{k: v[i:i + 16] for k, v in calib.items()})
        model.eval()
    engine = convert_to_integer(ours)
    mask = test["attention_mask"].bool()
    with torch.no_grad():
        ref = fp32(**test).last_hidden_state
        outs = {"transformers quant_mode=True": hf(**test).last_hidden_state,
                "ours fake-quant": ours(**test).last_hidden_state,
                "ours integer engine": engine(**test).last_hidden_state}
    print(f"all-MiniLM-L6-v2, {args.task} dev sentences: {args.n} to calibrate, {args.n} compared ({mask.sum()} tokens)\n")
    print("| path | token cosine to fp32 | max abs diff to fp32 | max abs diff to transformers quant |")
    print("|---|---|---|---|")
    hfq = outs["transformers quant_mode=True"]
    for name, h in outs.items():
        print(f"| {name} | {cosine(h, ref, mask):.4f} | {(h - ref)[mask].abs().max():.3f} | {(h - hfq)[mask].abs().max():.3f} |")
    print(f"\nours fake-quant vs integer engine: max abs diff {(outs['ours fake-quant'] - outs['ours integer engine']).abs().max():.3g}")


if __name__ == "__main__":
    main()
