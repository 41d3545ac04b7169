"""Small tokenizer directories for tests: a byte-level BPE built with the `tokenizers` library, the
R1 chat markers added at ids chosen like the R1-Distill releases': Qwen-like (EOS first, then User,
Assistant, BOS, <|EOT|>, <think>, </think>; <think> not special) and Llama-like (BOS, EOS, nine
reserved tokens, then User, Assistant, <think>, </think>). `hand_ids` is the oracle of their ids."""
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT, THINK, UNTHINK = "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"
CORPUS = ["The quick brown fox jumps over the lazy dog. Say hi, be brief.\n\n"] * 4

# (content, special) in id order after the BPE vocabulary, as in the releases' tokenizer.json.
QWEN_LIKE = [(EOS, True), (USER, False), (ASSISTANT, False), (BOS, True), ("<|EOT|>", True),
             (THINK, False), (UNTHINK, False)]
LLAMA_LIKE = ([(BOS, True), (EOS, True)] + [(f"<|reserved_special_token_{i}|>", True) for i in range(9)]
              + [(USER, True), (ASSISTANT, True), (THINK, False), (UNTHINK, False)])
NO_ASSISTANT = [(t, s) for t, s in QWEN_LIKE if t != ASSISTANT]


def make_tokenizer_dir(directory: Path, added: list[tuple[str, bool]], generation_eos=None) -> Path:
    """Writes tokenizer.json (a 300-token byte-level BPE, then `added` at the next ids) and
    tokenizer_config.json naming BOS / EOS (and generation_config.json when `generation_eos`)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    spec = json.loads(bpe.to_str())
    first = bpe.get_vocab_size()
    spec["added_tokens"] = [{"id": first + i, "content": t, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": s}
                            for i, (t, s) in enumerate(added)]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": BOS}, "eos_token": EOS}), encoding="utf-8")
    if generation_eos is not None:
        (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": generation_eos}))
    return directory


def hand_ids(directory: Path, pieces: list[str]) -> list[int]:
    """Ids by hand: each marker's own `token_to_id`, each plain-text piece encoded alone by the raw
    `tokenizers` object (no transformers wrapper, no chat code)."""
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    markers = {BOS, EOS, USER, ASSISTANT, THINK, UNTHINK}
    out = []
    for piece in pieces:
        out += [raw.token_to_id(piece)] if piece in markers else raw.encode(piece, add_special_tokens=False).ids
    return out
