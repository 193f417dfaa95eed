"""GLUE tasks: files, columns, labels and official metrics; loading from a local `glue_data/` copy or the hub.

Local layout (the GLUE download script's): `<glue_dir>/<TASK>/{train,dev,test}.tsv`, tab-separated and not
quoted. MNLI's dev sets are `dev_matched.tsv` and `dev_mismatched.tsv`.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Task:
    name: str
    directory: str  # folder under glue_data/
    text_columns: tuple[str, ...]  # header names, or column indices for header-less files
    label_column: str
    labels: tuple[str, ...] | None  # None: regression
    metrics: tuple[str, ...]
    dev_splits: tuple[str, ...] = ("dev",)
    header: bool = True
    column_index: dict = field(default_factory=dict)  # header-less files: name -> column

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


TASKS = {t.name: t for t in [
    Task("cola", "CoLA", ("sentence",), "label", ("0", "1"), ("matthews_correlation",), header=False,
         column_index={"sentence": 3, "label": 1}),
    Task("sst2", "SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",)),
    Task("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("f1", "accuracy")),
    Task("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearmanr")),
    Task("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("f1", "accuracy")),
    Task("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("contradiction", "entailment", "neutral"),
         ("accuracy",), dev_splits=("dev_matched", "dev_mismatched")),
    Task("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), ("accuracy",)),
    Task("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), ("accuracy",)),
    Task("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",)),
]}
HUB_NAMES = {"sst2": "sst2", "cola": "cola", "mrpc": "mrpc", "stsb": "stsb", "qqp": "qqp", "mnli": "mnli",
             "qnli": "qnli", "rte": "rte", "wnli": "wnli"}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def read_tsv(path: Path, task: Task) -> dict[str, list]:
    """Columns {text columns..., 'label'} of one split; labels as class indices (or float scores)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise ValueError(f"{path} is empty")
    if task.header:
        header, rows = rows[0], rows[1:]
        index = {name: i for i, name in enumerate(header)}
    else:
        index = task.column_index
    wanted = [*task.text_columns, task.label_column]
    missing = [c for c in wanted if c not in index]
    if missing:
        raise ValueError(f"{path} has no column(s) {missing}; header is {list(index)}")
    out = {c: [] for c in task.text_columns}
    out["label"] = []
    width = max(index[c] for c in wanted) + 1
    for n, row in enumerate(rows):
        if len(row) < width:
            raise ValueError(f"{path} line {n + 1 + task.header}: {len(row)} fields, expected at least {width}")
        for c in task.text_columns:
            out[c].append(row[index[c]])
        raw = row[index[task.label_column]].strip()
        if task.labels is None:
            out["label"].append(float(raw))
        else:
            if raw not in task.labels:
                raise ValueError(f"{path} line {n + 1 + task.header}: label {raw!r} not in {task.labels}")
            out["label"].append(task.labels.index(raw))
    return out


def resolve_glue_dir(glue_dir: str | os.PathLike | None) -> Path | None:
    """The configured directory, else $GLUE_DIR, else None (the hub)."""
    value = glue_dir or os.environ.get("GLUE_DIR")
    return Path(value).expanduser() if value else None


def load_split(task: Task, split: str, glue_dir: str | os.PathLike | None) -> dict[str, list]:
    """One split ('train', 'dev', 'dev_matched', ...) from the local copy, or from the hub without one."""
    root = resolve_glue_dir(glue_dir)
    if root is not None:
        path = root / task.directory / f"{split}.tsv"
        if not path.is_file():
            raise FileNotFoundError(
                f"GLUE file {path} not found. Point glue_dir= (or $GLUE_DIR) at a folder in the glue_data/ layout "
                f"holding {task.directory}/{split}.tsv")
        return read_tsv(path, task)
    return _load_hub(task, split)


def _load_hub(task: Task, split: str) -> dict[str, list]:
    import datasets

    hub_split = {"dev": "validation", "dev_matched": "validation_matched",
                 "dev_mismatched": "validation_mismatched"}.get(split, split)
    try:
        ds = datasets.load_dataset("nyu-mll/glue", HUB_NAMES[task.name], split=hub_split)
    except Exception as exc:  # offline, or the hub refused: say how to use a local copy
        raise FileNotFoundError(
            f"no local GLUE copy configured and the hub is unreachable ({type(exc).__name__}). Set glue_dir=/path/to/"
            f"glue_data (or $GLUE_DIR) to a folder holding {task.directory}/{split}.tsv") from exc
    keys = [k for k in ds.column_names if k not in ("label", "idx")]
    out = {c: list(ds[k]) for c, k in zip(task.text_columns, keys)}
    out["label"] = [float(v) for v in ds["label"]] if task.labels is None else list(ds["label"])
    return out


def compute_metrics(task: Task, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Official GLUE metrics, in percent (scikit-learn's and scipy's, as the GLUE metric of HuggingFace
    `evaluate`). predictions: class indices, or scores for regression."""
    from sklearn import metrics as skm

    scores = {
        "accuracy": lambda: skm.accuracy_score(labels, predictions),
        "f1": lambda: skm.f1_score(labels, predictions, zero_division=0.0),
        "matthews_correlation": lambda: skm.matthews_corrcoef(labels, predictions),
        "pearson": lambda: stats.pearsonr(predictions, labels)[0],
        "spearmanr": lambda: stats.spearmanr(predictions, labels)[0],
    }
    return {m: 100.0 * float(scores[m]()) for m in task.metrics}


def agreement(task: Task, predictions: np.ndarray, reference: np.ndarray) -> float:
    """How closely `predictions` follow `reference` (another model's, on the same examples), in percent:
    classification, the share of equal class indices; regression, 100 x Pearson r of the scores."""
    if task.labels is None:
        return 100.0 * float(np.corrcoef(predictions, reference)[0, 1])
    return 100.0 * float(np.mean(predictions == reference))
