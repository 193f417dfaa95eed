"""Evaluate a saved model on a GLUE split or a labelled TSV: prints the task's metrics and writes them as JSON.

    python scripts/evaluate.py task=sst2 model_dir=runs/sst2/minilm/qat-none-seed42          # its engine, dev
    python scripts/evaluate.py task=mrpc model_dir=<fp32 or QAT model dir> data_file=my.tsv
Reads only what it needs (the split or file, never the training set). Installed: `ibert-evaluate ...`.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding

from ibert import atomic, glue
from ibert.inference import check_task, encode, examples_of, load_model, load_tokenizer, logits_of, predictions
from ibert.inference import resolve_model_dir
from ibert.runs import CONFIG_DIR
from ibert.placement import resolve_device

log = logging.getLogger("ibert.evaluate")


def evaluate(cfg: DictConfig) -> dict:
    task = glue.get_task(cfg.task.name)
    model_dir = resolve_model_dir(cfg.model_dir)
    model, path = load_model(model_dir, resolve_device(cfg.device))
    check_task(model, task)
    if cfg.data_file:
        data_file = Path(cfg.data_file)
        if not data_file.is_file():
            raise FileNotFoundError(f"data_file {data_file} does not exist")
        raw, source = glue.read_tsv(data_file, task), data_file.name
    else:
        raw, source = glue.load_split(task, cfg.split, cfg.glue_dir), cfg.split
    tokenizer = load_tokenizer(model_dir, cfg.tokenizer)
    start = time.time()
    examples = encode(examples_of(raw, task), tokenizer, cfg.max_seq_length)
    logits = logits_of(model, DataCollatorWithPadding(tokenizer, return_tensors="pt"), examples, cfg.batch_size)
    metrics = glue.compute_metrics(task, predictions(task, logits), np.asarray(raw["label"]))
    result = {"task": task.name, "model_dir": str(model_dir), "path": path, "data": source, "examples": len(examples),
              "metrics": metrics, "seconds": time.time() - start}
    out = Path(cfg.output) if cfg.output else model_dir / "eval" / f"{task.name}-{Path(source).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_file(out, lambda p: Path(p).write_text(json.dumps(result, indent=2)))
    print(f"{task.name} {source} ({len(examples)} examples), {path} model {model_dir}: "
          + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()) + f"\nwritten to {out}")
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
