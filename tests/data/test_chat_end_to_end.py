"""A tiny model trained briefly on chat rows without reasoning, then prompted the standard way.

Rows without a reasoning trace are what most users bring. Trained on them, the model must continue
generation's prompt (`...<｜Assistant｜><think>\\n`) the way its training rows continued the same
ids: close the empty reasoning with `</think>` and answer. When a row was one encoding of its whole
string, the rows had `<think>`, `\\n\\n` where every prompt has `<think>`, `\\n`, and this model
answered nothing (end-of-sentence at once) for every prompt.
"""
import json

import pytest

from r1jax.inference import generate
from r1jax.data import load_tokenizer
from r1jax.train.loop import run
from train_fixtures import config

WORDS = ["apple", "river", "stone", "cloud", "green", "piano", "tiger", "lemon"]
STEPS = 30


@pytest.mark.slow
def test_trained_without_reasoning_answers_after_think(tmp_path):
    """Oracle: the hand-written acceptance rule of greedy generation from the standard prompt, for
    trained and held-out prompts alike: the text holds `</think>`, and the answer after it is not
    empty."""
    with open(tmp_path / "train.jsonl", "w") as f:
        for w in WORDS:
            f.write(json.dumps({"prompt": f"Say {w}.", "completion": w}) + "\n")
    run(config(tmp_path, tmp_path / "run", train__steps=STEPS, train__seq_len=32, train__log_every=10,
               train__eval_every=STEPS, train__checkpoint_every=STEPS, optim__lr=1e-2,
               data__val_fraction=0.25))
    model, _ = generate.load(str(tmp_path / "run"), dtype="float32")
    settings = generate.GenerationSettings(temperature=0.0, max_new_tokens=8, batch_size=8, steps_per_call=8)
    out = generate.generate_texts(model, load_tokenizer(), [f"Say {w}." for w in WORDS], settings)
    for w, o in zip(WORDS, out):
        assert "</think>" in o["text"] and o["answer"].strip(), (w, o["text"], o["tokens"])
