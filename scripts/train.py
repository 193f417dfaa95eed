"""GLUE fine-tuning with I-BERT: fp32, then QAT and the integer-only engine when quant_mode=true.

    python scripts/train.py task=sst2                      # fp32 fine-tune
    python scripts/train.py task=sst2 quant_mode=true      # fp32 -> QAT -> integer engine, all evaluated
    python scripts/train.py task=rte quant_mode=true init_from=runs/rte/minilm/fp32-none-seed42/fp32/model
    python scripts/train.py -m task=sst2 quant_mode=true force_dequant=none,gelu,softmax,layernorm,nonlinear
    python scripts/train.py -m hydra/launcher=joblib task=rte,mrpc quant_mode=true seed=1,2,3   # parallel jobs
    python scripts/train.py -m hparams_search=qat_lr task=rte init_from=<fp32 model dir>        # Optuna
    torchrun --nproc_per_node=2 scripts/train.py task=rte quant_mode=true      # data-parallel (DDP)
Run again with the same arguments to resume a killed run. Results: <run dir>/results.json.
Installed: `ibert-train ...` from any directory.
"""
import logging

import hydra
from omegaconf import DictConfig

from ibert.runs import CONFIG_DIR
from ibert.training import run


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the main dev metric of the `optimized_metric` path, for a sweeper that optimizes it."""
    logging.getLogger("ibert").setLevel(logging.INFO)
    results = run(cfg)
    if cfg.optimized_metric and results:
        return next(iter(results["metrics"][cfg.optimized_metric].values()))[results["main_metric"]]
    return None


if __name__ == "__main__":
    main()
