"""Training logs: loss, learning rate and gradient norm every N steps, dev metrics at every evaluation.

One `RunLog` per run, chosen by the `logger` config group: `csv` (default: `<run dir>/metrics.csv`, long format
stage,step,key,value), `tensorboard` (`<run dir>/tensorboard/<stage>`), `wandb` (when installed), `none`.
A resumed stage first drops what was logged after its checkpoint, so a log holds each step once.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ibert import atomic

CSV_NAME = "metrics.csv"
CSV_FIELDS = ("stage", "step", "key", "value")


class RunLog:
    """Writes nothing: the `none` logger, and the base of the others."""

    def start_stage(self, stage: str, step: int) -> None:
        """A stage starts (step 0) or resumes at `step`: forget what it logged after `step`."""

    def log(self, stage: str, step: int, values: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class CSVLog(RunLog):
    def __init__(self, out: Path):
        self.path = Path(out) / CSV_NAME

    def _rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def start_stage(self, stage: str, step: int) -> None:
        rows = [r for r in self._rows() if r["stage"] != stage or int(r["step"]) <= step]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic.write_file(self.path, lambda p: Path(p).write_text(buf.getvalue()))

    def log(self, stage: str, step: int, values: dict[str, float]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerows([stage, step, k, repr(float(v))] for k, v in values.items())


class TensorBoardLog(RunLog):
    def __init__(self, out: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError("logger=tensorboard needs the tensorboard package: pip install tensorboard") from exc
        self.root, self.make, self.writers = Path(out) / "tensorboard", SummaryWriter, {}

    def start_stage(self, stage: str, step: int) -> None:
        self.writers[stage] = self.make(str(self.root / stage), purge_step=step + 1 if step else None)

    def log(self, stage: str, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writers[stage].add_scalar(k, v, step)
        self.writers[stage].flush()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


class WandbLog(RunLog):
    def __init__(self, out: Path, cfg: DictConfig, project: str):
        try:
            import wandb
        except ImportError as exc:
            raise ImportError("logger=wandb needs the wandb package: pip install wandb") from exc
        run_id = "-".join(Path(out).resolve().parts[-3:]).replace(",", "_").replace("=", "_")[:128]
        self.run = wandb.init(project=project, id=run_id, resume="allow", dir=str(out),
                              config=OmegaConf.to_container(cfg, resolve=True))

    def log(self, stage: str, step: int, values: dict[str, float]) -> None:
        self.run.log({f"{stage}/step": step, **{f"{stage}/{k}": v for k, v in values.items()}})

    def close(self) -> None:
        self.run.finish()


def make_log(cfg: DictConfig, out: Path) -> RunLog:
    kind = cfg.logger.name
    if kind == "csv":
        return CSVLog(out)
    if kind == "tensorboard":
        return TensorBoardLog(out)
    if kind == "wandb":
        return WandbLog(out, cfg, cfg.logger.project)
    if kind == "none":
        return RunLog()
    raise ValueError(f"logger must be csv, tensorboard, wandb or none, got {kind!r}")
