"""Digests of the fake-quant path's arithmetic: seeded QAT steps from MiniLM on SST-2 training batches, then the
dev logits in eval mode. Run it at two commits to see whether a change altered any number of QAT or evaluation:

    GLUE_DIR=../shared/glue_data python scripts/qat_digest.py [--steps 300] [--backend auto]
    git worktree add /tmp/old <commit> && PYTHONPATH=/tmp/old GLUE_DIR=... python scripts/qat_digest.py

Prints the first losses, a digest of every step's loss, of the final parameters and of the dev logits.
"""
from __future__ import annotations

import argparse
import hashlib
import os

import torch
from transformers import AutoTokenizer

import ibert
from ibert import glue
from ibert.checkpoints import load_pretrained, offline_minilm_path


def digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:12]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--backend", default=None, help="IBertConfig.backend (default: the config's own)")
    p.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"))
    args = p.parse_args()
    if not args.glue_dir:
        raise SystemExit("give --glue-dir or set GLUE_DIR (the glue_data directory)")
    task = glue.get_task("sst2")
    train, dev = (glue.load_split(task, split, args.glue_dir) for split in ("train", "dev"))
    path = offline_minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    overrides = {"backend": args.backend} if args.backend else {}
    torch.manual_seed(42)
    model = load_pretrained(ibert.IBertForSequenceClassification, path, num_labels=2, quant_mode=True,
                            **overrides).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)

    def batch(data: dict, lo: int, hi: int) -> dict:
        return tok(data["sentence"][lo:hi], padding=True, truncation=True, max_length=128, return_tensors="pt")

    losses = []
    for s in range(args.steps):
        lo, hi = s * args.batch, (s + 1) * args.batch
        loss = model(**batch(train, lo, hi), labels=torch.tensor(train["label"][lo:hi])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(**batch(dev, lo, lo + 64)).logits for lo in range(0, len(dev["sentence"]), 64)])
    accuracy = (logits.argmax(-1) == torch.tensor(dev["label"])).float().mean().item()
    print(f"first losses {[f'{v:.10f}' for v in losses[:3]]}, last {losses[-1]:.10f}")
    print(f"losses {digest(str(losses).encode())}  parameters "
          f"{digest(b''.join(p.detach().numpy().tobytes() for p in model.parameters()))}  "
          f"dev logits {digest(logits.numpy().tobytes())}  (dev accuracy {accuracy:.4f})")


if __name__ == "__main__":
    main()
