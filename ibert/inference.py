"""Saved models in, predictions out: the shared ground of `scripts/evaluate.py` and `scripts/predict.py`.

A model directory is an integer engine (`save_integer`), or an fp32 / QAT model (`save_pretrained`); a run
directory (`runs/<task>/<model>/<name>/`) stands for its best stage: the integer engine first, then the QAT
(or PTQ) model, then the fp32 model.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, DataCollatorWithPadding

from ibert import glue
from ibert.checkpoints import load_pretrained
from ibert.engine import integer_dir, load_integer
from ibert.modeling import IBertForSequenceClassification
from ibert.placement import to_device

RUN_STAGES = ("integer", "qat/model", "ptq/model", "fp32/model")


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """`path` itself if it holds a model, else the best stage of the run directory it is."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if (path / "config.json").is_file():
        return path
    for stage in RUN_STAGES:
        if (path / stage / "config.json").is_file():
            return path / stage
    raise FileNotFoundError(f"{path} holds no model (config.json) and is no run directory with one of {RUN_STAGES}")


def load_model(model_dir: str | os.PathLike, device: torch.device) -> tuple[torch.nn.Module, str]:
    """(the model in eval mode on `device`, its path: 'integer-only', 'fake-quant' or 'fp32')."""
    model_dir = resolve_model_dir(model_dir)
    if integer_dir(model_dir) is not None:
        return load_integer(model_dir, device).eval(), "integer-only"
    model = load_pretrained(IBertForSequenceClassification, model_dir).to(device).eval()
    return model, "fake-quant" if model.config.quant_mode else "fp32"


def load_tokenizer(model_dir: str | os.PathLike, tokenizer: str | os.PathLike | None = None):
    """The tokenizer saved with the model (or beside it in its run), or the one named."""
    model_dir = resolve_model_dir(model_dir)
    candidates = [Path(tokenizer)] if tokenizer else [model_dir, *(model_dir.parent / s for s in RUN_STAGES[1:])]
    for c in candidates:
        if (c / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(c)
    raise FileNotFoundError(f"no tokenizer in {[str(c) for c in candidates]}: pass tokenizer=<a tokenizer directory>")


def check_task(model: torch.nn.Module, task: glue.Task) -> None:
    if model.config.num_labels != task.num_labels:
        raise ValueError(f"the model has {model.config.num_labels} output(s), task {task.name} needs {task.num_labels}")


def encode(texts: list[tuple[str, ...]], tokenizer, max_length: int) -> list[dict]:
    """Tokenized examples, unpadded (batches pad to their own length)."""
    columns = list(zip(*texts)) if texts else [[]]
    enc = tokenizer(*columns, truncation=True, max_length=max_length)
    return [{k: enc[k][i] for k in enc} for i in range(len(texts))]


def examples_of(raw: dict[str, list], task: glue.Task) -> list[tuple[str, ...]]:
    """The text tuples of a split read by `glue.load_split` / `glue.read_tsv`."""
    return list(zip(*(raw[c] for c in task.text_columns)))


@torch.no_grad()
def logits_of(model: torch.nn.Module, collate: DataCollatorWithPadding, examples: list[dict],
              batch_size: int) -> torch.Tensor:
    """[n, num_labels] float logits of tokenized examples (any 'labels' ignored), in batches of `batch_size`."""
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    out = []
    for i in range(0, len(examples), batch_size):
        batch = collate([{k: v for k, v in ex.items() if k != "labels"} for ex in examples[i:i + batch_size]])
        out.append(model(**to_device(batch, device)).logits.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.num_labels)


def divergence(task: glue.Task, logits: torch.Tensor, reference: torch.Tensor) -> float:
    """How far [n, num_labels] logits are from a reference model's on the same examples: KL(reference || these)
    of the class distributions, mean over examples; regression: the mean squared difference of the scores."""
    if task.labels is None:
        return float(((logits - reference) ** 2).mean())
    return float(torch.nn.functional.kl_div(logits.log_softmax(-1), reference.log_softmax(-1), log_target=True,
                                            reduction="batchmean"))


def predictions(task: glue.Task | None, logits: torch.Tensor) -> np.ndarray:
    """Class indices, or the score for a regression task."""
    return logits.squeeze(-1).numpy() if task is not None and task.labels is None else logits.argmax(-1).numpy()
