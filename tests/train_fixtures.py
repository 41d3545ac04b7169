"""Shared by the trainer tests: learnable synthetic data and a tiny run config over it."""
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "configs"))
import tiny  # noqa: E402  (configs/tiny.py)


def synthetic(path, n=300, seed=0):
    """Rows of input_ids counting up by one (mod 32) from a random start: learnable far below
    chance (ln 129280 = 11.77) and below the unigram entropy (ln 32 = 3.47)."""
    rng = np.random.RandomState(seed)
    with open(path, "w") as f:
        for _ in range(n):
            start, length = rng.randint(0, 32), rng.randint(20, 60)
            f.write(json.dumps({"input_ids": [int(100 + (start + i) % 32) for i in range(length)]}) + "\n")


def config(data, out, **over):
    """configs/tiny.py on DATA/train.jsonl into OUT; `section__key=value` overrides."""
    c = tiny.get_config()
    c.output_dir = str(out)
    c.data.train = str(Path(data) / "train.jsonl")
    c.data.cache_dir = str(Path(data) / "cache")
    c.data.max_examples = 0
    for k, v in over.items():
        section, key = k.split("__")
        c[section][key] = v
    return c
