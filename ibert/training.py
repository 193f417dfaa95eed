"""The GLUE recipe: stage 1 fp32 fine-tune, stage 2 QAT from it (or, path=ptq, a calibration of the activation
ranges without training; with `recipe.smoothquant_alpha` / `smoothquant_gelu_alpha`, SmoothQuant's per-channel
LayerNorm / i-GELU outputs, calibrated before either), conversion to the integer engine, and an evaluation of every path on dev. Each stage checkpoints
atomically every N steps and resumes after a kill, bit for bit; a finished stage is skipped when the run is started again with the same output directory. Under
`torchrun` the stages train data-parallel (DDP): each global batch of `recipe.batch_size` is split between the
processes, and rank 0 alone writes checkpoints, models, logs and results.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import AutoTokenizer, DataCollatorWithPadding, get_linear_schedule_with_warmup

import kernels
from ibert import atomic, glue
from ibert.checkpoints import load_pretrained, offline_minilm_path
from ibert.engine import convert_to_integer, load_integer, save_integer
from ibert.inference import divergence, logits_of, predictions
from ibert.loggers import RunLog, make_log
from ibert.modeling import IBertForSequenceClassification
from ibert.placement import World, init_world, to_device
from ibert.runs import check_identity, stage_identity

log = logging.getLogger(__name__)
DONE = "DONE"
SELECTION = "smoothing_selection.json"  # in a PTQ / QAT stage that chose its smoothing on training data


@dataclass
class Data:
    train: list[dict] | None
    dev: dict[str, list[dict]]
    collate: DataCollatorWithPadding


@dataclass
class RunContext:
    """What every stage of one run shares."""

    cfg: DictConfig
    task: glue.Task
    data: Data
    out: Path
    device: torch.device
    world: World
    log: RunLog


def model_path(cfg: DictConfig) -> str:
    return cfg.model.name_or_path or offline_minilm_path()


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def load_data(cfg: DictConfig, task: glue.Task, tokenizer, need_train: bool) -> Data:
    """Tokenized examples (no padding: batches are padded dynamically)."""
    import datasets

    def encode(split: str, limit: int | None) -> list[dict]:
        raw = glue.load_split(task, split, cfg.glue_dir)
        ds = datasets.Dataset.from_dict(raw)
        if limit is not None and limit < len(ds):
            ds = ds.shuffle(seed=cfg.seed).select(range(limit))
        cols = list(task.text_columns)
        ds = ds.map(lambda b: tokenizer(*[b[c] for c in cols], truncation=True, max_length=cfg.recipe.max_seq_length),
                    batched=True, remove_columns=cols)
        ds = ds.rename_column("label", "labels")
        return [dict(ex) for ex in ds]

    train = encode("train", cfg.recipe.max_train_samples) if need_train else None
    dev = {split: encode(split, cfg.recipe.max_eval_samples) for split in task.dev_splits}
    return Data(train, dev, DataCollatorWithPadding(tokenizer, return_tensors="pt"))


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, group_by_length: bool) -> list[np.ndarray]:
    """The batches (index arrays) of one epoch, ceil(n / batch_size) of them, from a seeded permutation.

    Grouped by length (as HuggingFace's `group_by_length`): each run of 50 batches is sorted by length before
    it is cut, and the batches are then shuffled, so a batch pads to about its own length, not the longest.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    if group_by_length:
        mega = 50 * batch_size
        order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")]
                                for c in np.split(order, range(mega, len(order), mega))])
    batches = np.split(order, range(batch_size, len(order), batch_size))
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def distillation_loss(out, teacher_out, attention_mask: torch.Tensor, distill: DictConfig,
                      regression: bool) -> torch.Tensor:
    """`(1 - distill.logits) * out.loss + distill.logits * soft-target loss + distill.hidden * hidden-state MSE`.
    Soft targets: KL(teacher || student) of the logits at `distill.temperature`, times its square (regression:
    the squared error to the teacher's score). Hidden states: the mean squared error over real tokens
    (attention_mask [B, S]), averaged over the embeddings and every layer."""
    s, t = out.logits, teacher_out.logits
    if regression:
        soft = F.mse_loss(s, t)
    else:
        T = distill.temperature
        soft = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                        reduction="batchmean") * T * T
    loss = (1 - distill.logits) * out.loss + distill.logits * soft
    if distill.hidden:
        mask = attention_mask[..., None].to(s.dtype)
        per_layer = [((hs - ht) ** 2 * mask).sum() / (mask.sum() * hs.shape[-1])
                     for hs, ht in zip(out.hidden_states, teacher_out.hidden_states)]
        loss = loss + distill.hidden * torch.stack(per_layer).mean()
    return loss


def train_stage(name: str, model: IBertForSequenceClassification, ctx: RunContext, lr: float, epochs: float,
                max_steps: int | None, teacher: IBertForSequenceClassification | None = None) -> float:
    """Fine-tune `model` (on ctx.device) in place, resuming from <run dir>/<name>/last.pt; returns the seconds this
    call trained. With a `teacher` (eval mode), the loss is `distillation_loss` with `recipe.distill`. Logs loss,
    learning rate and gradient norm every `logger.every_n_steps` steps, and the dev metrics every
    `recipe.eval_every` steps (if set)."""
    cfg, data, world, r = ctx.cfg, ctx.data, ctx.world, ctx.cfg.recipe
    hidden = teacher is not None and bool(r.distill.hidden)
    steps_per_epoch = math.ceil(len(data.train) / r.batch_size)
    total = math.ceil(epochs * steps_per_epoch)
    if max_steps:
        total = min(total, max_steps)
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias") and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=tuple(r.adam_betas), eps=r.adam_eps)
    sched = get_linear_schedule_with_warmup(opt, int(r.warmup_ratio * total), total)
    step, ckpt, losses = 0, ctx.out / name / "last.pt", []  # losses: of the steps not yet logged
    if ckpt.exists():
        try:
            state = torch.load(ckpt, map_location=ctx.device, weights_only=True)
        except Exception as exc:  # truncated or foreign file: say which, keep it for inspection
            raise ValueError(f"corrupt training checkpoint {ckpt}: {exc}") from exc
        if len(state["rng"]) != world.size:
            raise ValueError(f"{ckpt} was written by {len(state['rng'])} process(es), this run has {world.size}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state({k: v.cpu() for k, v in state["rng"][world.rank].items()}, ctx.device)
        step, losses = state["step"], list(state["losses"][world.rank])
        log.info("%s: resumed from step %d of %d (%s)", name, step, total, ckpt)
        if world.main:
            print(f"[{name}] resumed from step {step} of {total}", flush=True)
    if world.main:
        ctx.log.start_stage(name, step)
    model.train()
    net = model if world.size == 1 else DistributedDataParallel(
        model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    start = time.time()
    bar = tqdm(total=total, initial=step, desc=f"{name}", unit="step", dynamic_ncols=True, disable=not world.main)
    lengths = np.array([len(ex["input_ids"]) for ex in data.train])
    batches = None
    while step < total:
        epoch, i = divmod(step, steps_per_epoch)
        if i == 0 or batches is None:
            batches = epoch_batches(lengths, r.batch_size, cfg.seed + epoch, r.group_by_length)
        shard, weight = world.shard(batches[i])
        batch = to_device(data.collate([data.train[j] for j in shard]), ctx.device)
        out = net(**batch, output_hidden_states=hidden)
        loss = out.loss
        if teacher is not None:
            with torch.no_grad():
                taught = teacher(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=hidden)
            loss = distillation_loss(out, taught, batch["attention_mask"], r.distill, ctx.task.labels is None)
        opt.zero_grad(set_to_none=True)
        (loss * weight).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), r.max_grad_norm)
        opt.step()
        sched.step()
        step += 1
        losses.append(loss.item() * weight)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch, lr=f"{sched.get_last_lr()[0]:.2e}")
        if step % cfg.logger.every_n_steps == 0 or step == total:
            values = {"loss": world.mean(float(np.mean(losses))), "lr": sched.get_last_lr()[0],
                      "grad_norm": float(grad_norm), "epoch": step / steps_per_epoch}
            losses = []
            if world.main:
                ctx.log.log(name, step, values)
        if r.eval_every and (step % r.eval_every == 0 or step == total):
            if world.main:
                ctx.log.log(name, step, flat_metrics(evaluate(model, data, ctx.task, r.eval_batch_size)))
                model.train()
            world.barrier()
        if step % r.checkpoint_every == 0 or step == total:
            rngs = world.gather(rng_state(ctx.device))  # CPU tensors
            pending = world.gather(losses)
            if world.main:
                state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "rng": rngs, "losses": pending, "step": step}
                atomic.write_file(ckpt, lambda p: torch.save(state, p))
            world.barrier()
    bar.close()
    world.check_in_sync(model)
    return time.time() - start


@torch.no_grad()
def observe_ranges(model: IBertForSequenceClassification, batches: Iterable[dict],
                   smoothquant_alpha: float | None = None, smoothquant_gelu_alpha: float | None = None) -> None:
    """Post-training quantization: the fake-quant model's activation ranges observed (as in QAT: min/max, then an
    EMA) on `batches` (collated inputs on the model's device), dropout off; then, for each alpha given, SmoothQuant
    of the LayerNorm / i-GELU outputs from those ranges (the model built with `smoothquant` / `smoothquant_gelu`)."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    for batch in batches:
        model(**batch)
    model.eval()
    if smoothquant_alpha is not None:
        model.ibert.smooth_layernorm_outputs(smoothquant_alpha)
    if smoothquant_gelu_alpha is not None:
        model.ibert.smooth_gelu_outputs(smoothquant_gelu_alpha)


Smoothing = tuple[float | None, float | None]  # (LayerNorm outputs' alpha, i-GELU outputs' alpha); None: per tensor


def smoothing_candidates(recipe: DictConfig) -> list[Smoothing]:
    """The smoothings `recipe.smoothquant_alpha` / `smoothquant_gelu_alpha` allow: a value each, or, where either
    is a list, every combination (to choose from on training data, `choose_smoothing`)."""
    def as_list(key: str) -> list:
        v = recipe.get(key)
        if not (isinstance(v, (list, tuple)) or OmegaConf.is_list(v)):
            return [v]
        if not v:
            raise ValueError(f"recipe.{key} is an empty list: give an alpha, a list of them, or null")
        return list(v)

    return list(itertools.product(as_list("smoothquant_alpha"), as_list("smoothquant_gelu_alpha")))


def training_choice(ctx: RunContext) -> tuple[list[dict], list[dict]]:
    """(calibration examples, held-out selection examples): `recipe.calibration_samples` then the next
    `recipe.selection_samples` of a seeded permutation of the training set, so never the same examples."""
    r, train = ctx.cfg.recipe, ctx.data.train
    order = np.random.default_rng(ctx.cfg.seed).permutation(len(train))
    n, held_out = r.calibration_samples, r.get("selection_samples") or 0
    return [train[j] for j in order[:n]], [train[j] for j in order[n:n + held_out]]


def calibrate(model: IBertForSequenceClassification, ctx: RunContext, smoothing: Smoothing) -> float:
    """`observe_ranges` on the calibration examples (`training_choice`), in training batches, then `smoothing`.
    Returns the seconds it took."""
    start, bs = time.time(), ctx.cfg.recipe.batch_size
    examples = training_choice(ctx)[0]
    observe_ranges(model, (to_device(ctx.data.collate(examples[i:i + bs]), ctx.device)
                           for i in range(0, len(examples), bs)), *smoothing)
    return time.time() - start


def choose_smoothing(candidates: list[Smoothing], load_quant: Callable[[Smoothing], torch.nn.Module],
                     fp32: torch.nn.Module, ctx: RunContext) -> tuple[Smoothing, list[dict]]:
    """The candidate whose calibrated fake-quant model is closest to `fp32` (`inference.divergence`: KL of the class
    distributions, or the scores' squared error) on held-out training examples; with every candidate's score."""
    held_out = training_choice(ctx)[1]
    if not held_out:
        raise ValueError("choosing among several smoothquant alphas needs recipe.selection_samples > 0 (training "
                         "examples held out from calibration, to score each candidate on)")
    bs = ctx.cfg.recipe.eval_batch_size
    reference = logits_of(fp32.eval(), ctx.data.collate, held_out, bs)
    scored = []
    for smoothing in candidates:
        model = load_quant(smoothing)
        calibrate(model, ctx, smoothing)
        scored.append({"smoothquant_alpha": smoothing[0], "smoothquant_gelu_alpha": smoothing[1],
                       "divergence": divergence(ctx.task, logits_of(model, ctx.data.collate, held_out, bs), reference)})
    best = min(scored, key=lambda c: c["divergence"])
    return (best["smoothquant_alpha"], best["smoothquant_gelu_alpha"]), scored


def finish_stage(name: str, model, tokenizer, ctx: RunContext) -> None:
    """Save the stage's final model (HuggingFace layout) and mark the stage done (rank 0; the others wait)."""
    if ctx.world.main:
        out = ctx.out
        atomic.write_dir(out / name / "model", lambda d: (model.save_pretrained(d), tokenizer.save_pretrained(d)))
        (out / name / DONE).write_text("done\n")
        (out / name / "last.pt").unlink(missing_ok=True)
    ctx.world.barrier()


def dev_predictions(model, data: Data, task: glue.Task, batch_size: int) -> dict[str, np.ndarray]:
    """The model's predictions (class indices, or scores) on each dev split."""
    model.eval()
    return {split: predictions(task, logits_of(model, data.collate, examples, batch_size))
            for split, examples in data.dev.items()}


def metrics_of(preds: dict[str, np.ndarray], data: Data, task: glue.Task) -> dict[str, dict[str, float]]:
    return {split: glue.compute_metrics(task, p, np.array([ex["labels"] for ex in data.dev[split]]))
            for split, p in preds.items()}


def evaluate(model, data: Data, task: glue.Task, batch_size: int) -> dict[str, dict[str, float]]:
    """The task's metrics on each dev split."""
    return metrics_of(dev_predictions(model, data, task, batch_size), data, task)


def flat_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """{'dev/accuracy': ...} from {'dev': {'accuracy': ...}}."""
    return {f"{split}/{k}": v for split, m in metrics.items() for k, v in m.items()}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(cfg: DictConfig) -> dict:
    """The whole pipeline for one task; returns (and, on rank 0, writes) the results."""
    task = glue.get_task(cfg.task.name)
    quant = bool(cfg.quant_mode)
    if cfg.path.name != "fp32" and not quant:
        raise ValueError(f"path={cfg.path.name} needs quant_mode=true")
    world, device = init_world(cfg.device)
    commit = git_commit()  # the code that runs is the code checked out at the start
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed + world.rank)  # each rank its own dropout stream
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    kernels.set_compile(bool(cfg.compile))
    src = model_path(cfg)
    tokenizer = AutoTokenizer.from_pretrained(src)
    need_fp32_stage = not (quant and cfg.init_from)
    data = load_data(cfg, task, tokenizer, need_train=True)
    log.info("task %s: %d train examples, dev %s; device %s, %d process(es)", task.name, len(data.train),
             {k: len(v) for k, v in data.dev.items()}, device, world.size)
    ctx = RunContext(cfg, task, data, out, device, world, make_log(cfg, out) if world.main else RunLog())
    times, models = {}, {}
    labels = dict(num_labels=task.num_labels, problem_type="regression" if task.labels is None else None)
    load = lambda path, **kw: load_pretrained(IBertForSequenceClassification, path, **kw).to(device)

    def check(stage_dir: Path, identity: dict) -> None:
        if world.main:
            check_identity(stage_dir, identity)
        world.barrier()

    fp32_identity = stage_identity(cfg, "fp32", world.size) if need_fp32_stage else None
    if need_fp32_stage:
        check(out / "fp32", fp32_identity)
        if (out / "fp32" / DONE).exists():
            model = load(out / "fp32" / "model", quant_mode=False)
        else:
            model = load(src, quant_mode=False, **labels)
            times["fp32_train_s"] = train_stage("fp32", model, ctx, cfg.recipe.lr, cfg.recipe.epochs,
                                                cfg.recipe.max_steps)
            finish_stage("fp32", model, tokenizer, ctx)
        models["fp32"] = model
    init = Path(cfg.init_from) if cfg.init_from else out / "fp32" / "model"
    if quant:  # the QAT or PTQ stage, named after the path
        stage = cfg.path.name
        quant_identity = stage_identity(cfg, stage, world.size, fp32_identity)
        check(out / stage, quant_identity)
        if not (out / stage / DONE).exists():
            load_quant = lambda smoothing: load(init, quant_mode=True, force_dequant=cfg.force_dequant,
                                                smoothquant=smoothing[0] is not None,
                                                smoothquant_gelu=smoothing[1] is not None)
            candidates = smoothing_candidates(cfg.recipe)
            if len(candidates) > 1:
                t = time.time()
                fp32 = models["fp32"] if "fp32" in models else load(init, quant_mode=False)
                smoothing, scored = choose_smoothing(candidates, load_quant, fp32, ctx)
                times["smoothing_selection_s"] = time.time() - t
                if world.main:
                    atomic.write_file(out / stage / SELECTION, lambda p: Path(p).write_text(json.dumps(
                        {"chosen": dict(zip(("smoothquant_alpha", "smoothquant_gelu_alpha"), smoothing)),
                         "candidates": scored}, indent=2)))
                log.info("smoothing chosen on %d held-out training examples: %s", cfg.recipe.selection_samples,
                         smoothing)
            else:
                smoothing = candidates[0]
            qmodel = load_quant(smoothing)
            if stage == "ptq" or smoothing != (None, None):  # QAT smooths calibrated ranges
                times[f"{stage}_calibration_s"] = calibrate(qmodel, ctx, smoothing)
            if stage != "ptq":
                teacher = None
                if cfg.recipe.get("distill"):
                    teacher = (models["fp32"] if "fp32" in models else load(init, quant_mode=False)).eval()
                    teacher.requires_grad_(False)
                times["qat_train_s"] = train_stage("qat", qmodel, ctx, cfg.recipe.qat_lr, cfg.recipe.qat_epochs,
                                                   cfg.recipe.qat_max_steps, teacher)
            finish_stage(stage, qmodel, tokenizer, ctx)
        qmodel = load(out / stage / "model", quant_mode=True, force_dequant=cfg.force_dequant)
        models["fake-quant"] = qmodel
        if cfg.force_dequant == "none":
            integer_dir = out / "integer"
            if (integer_dir / DONE).exists():
                check(integer_dir, quant_identity)
            elif world.main:
                atomic.write_dir(integer_dir, lambda d: (check_identity(d, quant_identity),
                                                         save_integer(convert_to_integer(qmodel.eval()), d),
                                                         tokenizer.save_pretrained(d)))
                (integer_dir / DONE).write_text("done\n")
            world.barrier()
            models["integer-only"] = load_integer(integer_dir, device)
        if "fp32" not in models and cfg.init_from:
            models["fp32"] = load(init, quant_mode=False)
    if not world.main:  # rank 0 evaluates and writes the results
        world.barrier()
        return {}

    metrics, preds = {}, {}
    ctx.log.start_stage("eval", -1)  # a rerun's evaluation replaces the last one's
    for path, model in models.items():
        t = time.time()
        preds[path] = dev_predictions(model, data, task, cfg.recipe.eval_batch_size)
        metrics[path] = metrics_of(preds[path], data, task)
        times[f"{path}_eval_s"] = time.time() - t
        ctx.log.log("eval", 0, {f"{path}/{k}": v for k, v in flat_metrics(metrics[path]).items()})
    ctx.log.close()
    if "integer-only" in preds:  # the engine computes the fake-quant model's integers: every prediction agrees
        agree = {split: int((p == preds["fake-quant"][split]).sum()) for split, p in preds["integer-only"].items()}
        checks = {"integer_equals_fake_quant": all(agree[s] == len(data.dev[s]) for s in agree),
                  "integer_agrees_with_fake_quant": agree}
    else:
        checks = {}
    if "fp32" in preds:  # fidelity, less noisy than the metric: % of predictions equal (regression: 100 x r)
        checks["agreement_with_fp32"] = {
            path: {split: glue.agreement(task, p[split], preds["fp32"][split]) for split in p}
            for path, p in preds.items() if path != "fp32"}
    if quant and (out / cfg.path.name / SELECTION).exists():
        checks["smoothing_selection"] = json.loads((out / cfg.path.name / SELECTION).read_text())
    results = {
        "task": task.name, "main_metric": task.main_metric, "metrics": metrics, "times_s": times, **checks,
        "seed": cfg.seed, "world_size": world.size, "git_commit": commit,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    atomic.write_file(out / "results.json", lambda p: Path(p).write_text(json.dumps(results, indent=2, default=str)))
    print(format_table(task, metrics))
    world.barrier()
    return results


def format_table(task: glue.Task, metrics: dict[str, dict[str, dict[str, float]]]) -> str:
    splits = list(next(iter(metrics.values())))
    cols = [f"{s} {m}" if len(splits) > 1 else m for s in splits for m in task.metrics]
    lines = [f"| path | {' | '.join(cols)} |", "|---|" + "---|" * len(cols)]
    for path, per_split in metrics.items():
        vals = [f"{per_split[s][m]:.2f}" for s in splits for m in task.metrics]
        lines.append(f"| {path} | {' | '.join(vals)} |")
    return f"\n{task.name} (dev)\n" + "\n".join(lines)
