"""Labels and scores for sentences with any saved model (the integer engine first), batched.

    python scripts/predict.py --model runs/sst2/minilm/qat-none-seed42 --task sst2 "a gripping film" "dull"
    python scripts/predict.py --model <dir> --task mrpc --file pairs.txt      # one example a line, pairs by a tab
    python scripts/predict.py --model <dir> --task rte --tsv dev.tsv --out predictions.jsonl
Prints one line an example: the label (the task's label name), its probability (the score, for regression),
the text. --out writes JSON lines with every class's probability. Installed: `ibert-predict ...`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

from ibert import atomic, glue
from ibert.inference import check_task, encode, examples_of, load_model, load_tokenizer, logits_of, resolve_model_dir
from ibert.placement import resolve_device


def read_texts(args: argparse.Namespace, task: glue.Task | None) -> list[tuple[str, ...]]:
    if args.tsv:
        if task is None:
            raise SystemExit("--tsv needs --task (its columns are the task's)")
        return examples_of(glue.read_tsv(Path(args.tsv), task), task)
    lines = Path(args.file).read_text(encoding="utf-8").splitlines() if args.file else args.sentences
    if not lines:
        raise SystemExit("no input: give sentences, --file or --tsv")
    width = len(task.text_columns) if task else 1
    texts = [tuple(line.split("\t")) for line in lines if line.strip()]
    bad = [i + 1 for i, t in enumerate(texts) if len(t) != width]
    if bad:
        raise SystemExit(f"the task wants {width} tab-separated text(s) an example; lines {bad[:5]} differ")
    return texts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sentences", nargs="*")
    p.add_argument("--model", required=True, help="an integer engine, an fp32 / QAT model, or a run directory")
    p.add_argument("--task", default=None, help="GLUE task: label names, sentence pairs, the TSV's columns")
    p.add_argument("--file", default=None, help="a text file, one example a line (pairs separated by a tab)")
    p.add_argument("--tsv", default=None, help="a TSV in the task's GLUE format")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="JSON lines: text, label, probabilities (or score)")
    args = p.parse_args(argv)
    task = glue.get_task(args.task) if args.task else None
    texts = read_texts(args, task)
    model_dir = resolve_model_dir(args.model)
    model, path = load_model(model_dir, resolve_device(args.device))
    if task is not None:
        check_task(model, task)
    tokenizer = load_tokenizer(model_dir, args.tokenizer)
    logits = logits_of(model, DataCollatorWithPadding(tokenizer, return_tensors="pt"),
                       encode(texts, tokenizer, args.max_length), args.batch_size)
    rows = []
    for text, row in zip(texts, logits):
        if model.config.num_labels == 1:
            rows.append({"text": list(text), "score": float(row[0])})
            continue
        probs = torch.softmax(row, -1)
        k = int(probs.argmax())
        rows.append({"text": list(text), "label": task.labels[k] if task else k, "probability": float(probs[k]),
                     "probabilities": [float(v) for v in probs]})
    print(f"# {len(rows)} examples, {path} model {model_dir}", file=sys.stderr)
    for r in rows:
        value = f"{r['score']:.4f}" if "score" in r else f"{r['label']}\t{r['probability']:.4f}"
        print(f"{value}\t{' | '.join(r['text'])}")
    if args.out:
        atomic.write_file(Path(args.out), lambda f: Path(f).write_text("".join(json.dumps(r) + "\n" for r in rows)))


if __name__ == "__main__":
    main()
