"""GLUE fine-tuning with I-BERT: fp32, then QAT and the integer-only engine when quant_mode=true.

    python scripts/train.py task=sst2                      # fp32 fine-tune
    python scripts/train.py task=sst2 quant_mode=true      # fp32 -> QAT -> integer engine, all evaluated
    python scripts/train.py task=rte quant_mode=true init_from=runs/rte/minilm/fp32-none-seed42/fp32/model
    python scripts/train.py -m task=sst2 quant_mode=true force_dequant=none,gelu,softmax,layernorm,nonlinear
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
def main(cfg: DictConfig) -> None:
    logging.getLogger("ibert").setLevel(logging.INFO)
    run(cfg)


if __name__ == "__main__":
    main()
