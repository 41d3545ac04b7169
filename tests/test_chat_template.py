"""The R1 chat format for training (DESIGN.md section 3): `tokenize_example` ids and loss mask per row
format, the generation prompt, and BPE merges across the trained boundary.

The reference is always a hand-written rendered string encoded by the tokenizer, never the renderer
under test. A case is written twice: as the full string and as consecutive (text, trained) pieces
whose concatenation is that string. The expected mask comes from the pieces: the encoding of every
prefix ending at a piece boundary must be a prefix of the full ids (no BPE merge crosses the
boundary), and each piece's tokens take that piece's trained flag. The masked tokens, decoded, must
be exactly the trained pieces joined.
"""
import dataclasses

import pytest

from r1jax.data import chat, formats
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.data.chat import tokenize_example

BOS_ID, EOS_ID, THINK_CLOSE_ID = 0, 1, 128799


@pytest.fixture(scope="module")
def tok():
    return tokenizer_lib.load_tokenizer()


def enc(tok, text):
    return tokenizer_lib.encode(tok, text, add_bos=True)


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def masked_text(tok, out):
    return decode(tok, [t for t, m in zip(out["input_ids"], out["loss_mask"], strict=True) if m])


def expected_mask(tok, full, pieces):
    """The mask the hand-written pieces imply, asserting the prefix property at each boundary."""
    assert "".join(text for text, _ in pieces) == full  # the two hand-written forms agree
    full_ids = enc(tok, full)
    mask, prefix, done = [], "", 0
    for text, trained in pieces:
        prefix += text
        ids = enc(tok, prefix)
        assert full_ids[:len(ids)] == ids, f"a BPE merge crosses the boundary after {prefix!r}"
        mask += [int(trained)] * (len(ids) - done)
        done = len(ids)
    assert done == len(full_ids)
    return mask


def check(tok, out, full, pieces):
    assert set(out) == {"input_ids", "loss_mask"}
    assert out["input_ids"] == enc(tok, full)
    assert out["loss_mask"] == expected_mask(tok, full, pieces)
    assert masked_text(tok, out) == "".join(text for text, trained in pieces if trained)


@dataclasses.dataclass(frozen=True)
class Case:
    row: dict
    full: str
    pieces: tuple[tuple[str, bool], ...]
    train_all_turns: bool = False


def user(content):
    return {"role": "user", "content": content}


def assistant(content, reasoning=None):
    m = {"role": "assistant", "content": content}
    if reasoning is not None:
        m["reasoning_content"] = reasoning
    return m


SINGLE_FULL = ("<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n"
               "Add two and two: four.\n</think>\n\n2 + 2 = 4.<｜end▁of▁sentence｜>")
SINGLE_PIECES = (("<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n", False),
                 ("Add two and two: four.\n</think>\n\n2 + 2 = 4.<｜end▁of▁sentence｜>", True))

MULTI_MESSAGES = [
    {"role": "system", "content": "You are terse."},
    user("Hi there"),
    assistant("Hello!", reasoning="A greeting; greet back."),
    user("Name a prime."),
    assistant("<think>\nThe smallest prime is 2.\n</think>\n\n2"),
]
MULTI_FULL = ("<｜begin▁of▁sentence｜>You are terse.<｜User｜>Hi there<｜Assistant｜>Hello!<｜end▁of▁sentence｜>"
              "<｜User｜>Name a prime.<｜Assistant｜><think>\nThe smallest prime is 2.\n</think>\n\n2"
              "<｜end▁of▁sentence｜>")


def multi_pieces(train_all_turns):
    return (("<｜begin▁of▁sentence｜>You are terse.<｜User｜>Hi there<｜Assistant｜>", False),
            ("Hello!<｜end▁of▁sentence｜>", train_all_turns),
            ("<｜User｜>Name a prime.<｜Assistant｜><think>\n", False),
            ("The smallest prime is 2.\n</think>\n\n2<｜end▁of▁sentence｜>", True))


CASES = {
    "messages_reasoning_content": Case(
        {"messages": [user("What is 2+2?"), assistant("2 + 2 = 4.", reasoning="Add two and two: four.")]},
        SINGLE_FULL, SINGLE_PIECES),
    "messages_think_in_content": Case(
        {"messages": [user("What is 2+2?"),
                      assistant("<think>\nAdd two and two: four.\n</think>\n\n2 + 2 = 4.")]},
        SINGLE_FULL, SINGLE_PIECES),
    # The <think> block's own newlines are not part of the reasoning or the answer.
    "messages_think_in_content_unspaced": Case(
        {"messages": [user("What is 2+2?"), assistant("<think>Add two and two: four.</think>2 + 2 = 4.")]},
        SINGLE_FULL, SINGLE_PIECES),
    "messages_system": Case(
        {"messages": [{"role": "system", "content": "Answer in French."}, user("Say yes."),
                      assistant("Oui.", reasoning="French for yes.")]},
        "<｜begin▁of▁sentence｜>Answer in French.<｜User｜>Say yes.<｜Assistant｜><think>\nFrench for yes.\n"
        "</think>\n\nOui.<｜end▁of▁sentence｜>",
        (("<｜begin▁of▁sentence｜>Answer in French.<｜User｜>Say yes.<｜Assistant｜><think>\n", False),
         ("French for yes.\n</think>\n\nOui.<｜end▁of▁sentence｜>", True))),
    # Earlier turns: answer only (reasoning stripped, as the released template renders history).
    "messages_multi_turn": Case({"messages": MULTI_MESSAGES}, MULTI_FULL, multi_pieces(False)),
    "messages_multi_turn_train_all_turns": Case(
        {"messages": MULTI_MESSAGES}, MULTI_FULL, multi_pieces(True), train_all_turns=True),
    "messages_multi_turn_history_think_in_content": Case(
        {"messages": [MULTI_MESSAGES[0], user("Hi there"),
                      assistant("<think>\nA greeting; greet back.\n</think>\n\nHello!"),
                      user("Name a prime."), assistant("2", reasoning="The smallest prime is 2.")]},
        MULTI_FULL, multi_pieces(True), train_all_turns=True),
    "prompt_completion_think": Case(
        {"prompt": "Say hi in Español.", "completion": "<think>\nSpanish: hola.\n</think>\n\n¡Hola!"},
        "<｜begin▁of▁sentence｜><｜User｜>Say hi in Español.<｜Assistant｜><think>\nSpanish: hola.\n</think>\n\n"
        "¡Hola!<｜end▁of▁sentence｜>",
        (("<｜begin▁of▁sentence｜><｜User｜>Say hi in Español.<｜Assistant｜><think>\n", False),
         ("Spanish: hola.\n</think>\n\n¡Hola!<｜end▁of▁sentence｜>", True))),
    "single_turn_train_all_turns_is_default": Case(
        {"prompt": "Q?", "completion": "<think>r</think>A"},
        "<｜begin▁of▁sentence｜><｜User｜>Q?<｜Assistant｜><think>\nr\n</think>\n\nA<｜end▁of▁sentence｜>",
        (("<｜begin▁of▁sentence｜><｜User｜>Q?<｜Assistant｜><think>\n", False),
         ("r\n</think>\n\nA<｜end▁of▁sentence｜>", True)), train_all_turns=True),
    # Extra keys and a category change nothing in the rendering.
    "extra_keys_ignored": Case(
        {"messages": [user("What is 2+2?"), assistant("2 + 2 = 4.", reasoning="Add two and two: four.")],
         "category": "math", "id": 17},
        SINGLE_FULL, SINGLE_PIECES),
    # A history answer starting with a space: the special token before it blocks any merge.
    "history_answer_leading_space_trained": Case(
        {"messages": [user("A"), assistant(" b"), user("C"), assistant("d", reasoning="e")]},
        "<｜begin▁of▁sentence｜><｜User｜>A<｜Assistant｜> b<｜end▁of▁sentence｜><｜User｜>C<｜Assistant｜><think>\n"
        "e\n</think>\n\nd<｜end▁of▁sentence｜>",
        (("<｜begin▁of▁sentence｜><｜User｜>A<｜Assistant｜>", False), (" b<｜end▁of▁sentence｜>", True),
         ("<｜User｜>C<｜Assistant｜><think>\n", False), ("e\n</think>\n\nd<｜end▁of▁sentence｜>", True)),
        train_all_turns=True),
    # Reasoning starting with a space: "\n" and " Let" stay separate tokens, so the first trained
    # character's token (" Let") is masked in and the prompt's ids are a prefix.
    "boundary_reasoning_leading_space": Case(
        {"messages": [user("Q"), assistant("A", reasoning=" Let me see.")]},
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n Let me see.\n</think>\n\nA<｜end▁of▁sentence｜>",
        (("<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n", False),
         (" Let me see.\n</think>\n\nA<｜end▁of▁sentence｜>", True))),
    # An answer starting with a space lies wholly inside the trained part ("\n\n", " Sure").
    "boundary_answer_leading_space": Case(
        {"messages": [user("Q"), assistant(" Sure.", reasoning="ok")]},
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\nok\n</think>\n\n Sure.<｜end▁of▁sentence｜>",
        (("<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n", False),
         ("ok\n</think>\n\n Sure.<｜end▁of▁sentence｜>", True))),
    # "\r\n" after the prompt's "\n" does not merge with it in this tokenizer.
    "boundary_reasoning_leading_crlf": Case(
        {"messages": [user("Q"), assistant("A", reasoning="\r\nfoo")]},
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n\r\nfoo\n</think>\n\nA<｜end▁of▁sentence｜>",
        (("<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n", False),
         ("\r\nfoo\n</think>\n\nA<｜end▁of▁sentence｜>", True))),
}


@pytest.mark.parametrize("name", CASES)
def test_rendered_ids_and_mask(tok, name):
    case = CASES[name]
    out = tokenize_example(case.row, tok, train_all_turns=case.train_all_turns)
    check(tok, out, case.full, case.pieces)


def test_accepts_a_parsed_example(tok):
    case = CASES["messages_multi_turn"]
    ex = formats.parse_row(case.row, "f.jsonl:3")
    check(tok, tokenize_example(ex, tok), case.full, case.pieces)


def test_history_turns_untrained_by_default_trained_with_option(tok):
    default = tokenize_example({"messages": MULTI_MESSAGES}, tok)
    all_turns = tokenize_example({"messages": MULTI_MESSAGES}, tok, train_all_turns=True)
    assert default["input_ids"] == all_turns["input_ids"]
    assert masked_text(tok, default) == "The smallest prime is 2.\n</think>\n\n2<｜end▁of▁sentence｜>"
    assert masked_text(tok, all_turns) == (
        "Hello!<｜end▁of▁sentence｜>The smallest prime is 2.\n</think>\n\n2<｜end▁of▁sentence｜>")
    # Two trained EOS with the option, one without; the history's reasoning is nowhere in the ids.
    assert [t for t, m in zip(default["input_ids"], default["loss_mask"]) if m].count(EOS_ID) == 1
    assert [t for t, m in zip(all_turns["input_ids"], all_turns["loss_mask"]) if m].count(EOS_ID) == 2
    assert "greet back" not in decode(tok, default["input_ids"])


def test_final_reasoning_is_a_target(tok):
    out = tokenize_example(CASES["messages_reasoning_content"].row, tok)
    ids, mask = out["input_ids"], out["loss_mask"]
    start, end = ids.index(128798) + 2, ids.index(THINK_CLOSE_ID)  # after "<think>", "\n"
    # The reasoning's "." and the closing "\n" are one token, so compare with that "\n" included.
    assert ids[start:end] == tokenizer_lib.encode(tok, "Add two and two: four.\n", add_bos=False)
    assert mask[:start] == [0] * start
    assert mask[start:] == [1] * (len(ids) - start) and ids[-1] == EOS_ID


@pytest.mark.parametrize("row,prompt", [
    (CASES["messages_reasoning_content"].row,
     "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n"),
    ({"messages": MULTI_MESSAGES},
     "<｜begin▁of▁sentence｜>You are terse.<｜User｜>Hi there<｜Assistant｜>Hello!<｜end▁of▁sentence｜>"
     "<｜User｜>Name a prime.<｜Assistant｜><think>\n"),
    ({"input": "Ping", "output": "Pong"}, "<｜begin▁of▁sentence｜><｜User｜>Ping<｜Assistant｜><think>\n"),
])
def test_generation_prompt(tok, row, prompt):
    text = chat.generation_prompt(formats.parse_row(row, "x:1"))
    assert text == prompt
    assert text.endswith("<｜Assistant｜><think>\n")
    assert enc(tok, text)[-3:] == [128804, 128798, 201]  # "<｜Assistant｜>", "<think>", "\n"


# ---- BPE merges across the trained boundary -------------------------------------------------
# The prompt ends with "<think>\n". When the trained part starts with "\n" (always so with no
# reasoning: "<think>\n" + "\n</think>"), or with " \n", the tokenizer merges the prompt's last "\n"
# with it ("\n\n" = 271, "\n \n" = 77968). Pinned here: ids stay the encoding of the full string;
# the merged token holds target characters, so it is trained (no target character is lost); the
# prompt's own ids ([..., "<think>", "\n"]) are then not a prefix of the training ids.

MERGES = {
    "prompt_completion_no_think": (
        {"prompt": "Say hi.", "completion": "hi"},
        "<｜begin▁of▁sentence｜><｜User｜>Say hi.<｜Assistant｜><think>\n\n</think>\n\nhi<｜end▁of▁sentence｜>",
        "<｜begin▁of▁sentence｜><｜User｜>Say hi.<｜Assistant｜><think>\n", "\n\n",
        "</think>\n\nhi<｜end▁of▁sentence｜>"),
    "input_output": (
        {"input": "Ping", "output": "Pong"},
        "<｜begin▁of▁sentence｜><｜User｜>Ping<｜Assistant｜><think>\n\n</think>\n\nPong<｜end▁of▁sentence｜>",
        "<｜begin▁of▁sentence｜><｜User｜>Ping<｜Assistant｜><think>\n", "\n\n",
        "</think>\n\nPong<｜end▁of▁sentence｜>"),
    "messages_no_reasoning": (
        {"messages": [user("Q"), assistant("A")]},
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n\n</think>\n\nA<｜end▁of▁sentence｜>",
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n", "\n\n",
        "</think>\n\nA<｜end▁of▁sentence｜>"),
    "reasoning_leading_newline": (
        {"messages": [user("Q"), assistant("A", reasoning="\nfoo")]},
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n\nfoo\n</think>\n\nA<｜end▁of▁sentence｜>",
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n", "\n\n",
        "foo\n</think>\n\nA<｜end▁of▁sentence｜>"),
    "reasoning_leading_space_newline": (
        {"messages": [user("Q"), assistant("A", reasoning=" \nfoo")]},
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n \nfoo\n</think>\n\nA<｜end▁of▁sentence｜>",
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n", "\n \n",
        "foo\n</think>\n\nA<｜end▁of▁sentence｜>"),
}


@pytest.mark.parametrize("name", MERGES)
def test_boundary_merge_trains_the_merged_token(tok, name):
    row, full, prompt, merged, trained_after_merge = MERGES[name]
    out = tokenize_example(row, tok)
    ids, mask = out["input_ids"], out["loss_mask"]
    assert ids == enc(tok, full)
    prompt_ids = enc(tok, prompt)
    assert ids[:len(prompt_ids)] != prompt_ids  # the prefix property fails here
    head = prompt_ids[:-1]  # everything before the prompt's final "\n"
    assert ids[:len(head)] == head
    merged_id, = tokenizer_lib.encode(tok, merged, add_bos=False)
    assert ids[len(head)] == merged_id
    assert mask == [0] * len(head) + [1] * (len(ids) - len(head))  # the merged token: trained
    assert masked_text(tok, out) == merged + trained_after_merge
    assert full == prompt + merged[1:] + trained_after_merge


def test_think_form_strips_leading_newlines_so_no_merge(tok):
    # A <think> block's reasoning loses its leading/trailing "\n", so "\n\nfoo" cannot merge; the same
    # reasoning given as reasoning_content is kept verbatim (and merges, see above).
    out = tokenize_example({"messages": [user("Q"), assistant("<think>\n\nfoo\n\n</think>\n\n\nA")]}, tok)
    check(tok, out,
          "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\nfoo\n</think>\n\nA<｜end▁of▁sentence｜>",
          (("<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n", False),
           ("foo\n</think>\n\nA<｜end▁of▁sentence｜>", True)))


def test_non_ascii_and_split_characters(tok):
    # Byte-level BPE may split one character over several tokens: offsets still place each of them.
    row = {"messages": [user("翻译：猫"), assistant("cat 🐈", reasoning="猫 means cat 🐈‍⬛.")]}
    check(tok, tokenize_example(row, tok),
          "<｜begin▁of▁sentence｜><｜User｜>翻译：猫<｜Assistant｜><think>\n猫 means cat 🐈‍⬛.\n</think>\n\n"
          "cat 🐈<｜end▁of▁sentence｜>",
          (("<｜begin▁of▁sentence｜><｜User｜>翻译：猫<｜Assistant｜><think>\n", False),
           ("猫 means cat 🐈‍⬛.\n</think>\n\ncat 🐈<｜end▁of▁sentence｜>", True)))


# ---- text and input_ids rows ---------------------------------------------------------------

@pytest.mark.parametrize("text,full", [
    ("Hello world.\nBye.", "<｜begin▁of▁sentence｜>Hello world.\nBye."),
    (" leading space", "<｜begin▁of▁sentence｜> leading space"),
    # A BOS already written in the text is not doubled.
    ("<｜begin▁of▁sentence｜>Hi<｜Assistant｜>", "<｜begin▁of▁sentence｜>Hi<｜Assistant｜>"),
])
def test_text_row_trains_all_but_bos(tok, text, full):
    out = tokenize_example({"text": text}, tok)
    check(tok, out, full, (("<｜begin▁of▁sentence｜>", False), (full[len("<｜begin▁of▁sentence｜>"):], True)))
    assert out["input_ids"].count(BOS_ID) == 1 and out["loss_mask"][0] == 0


def test_input_ids_rows(tok):
    assert tokenize_example({"input_ids": [0, 5, 6, 7]}, tok) == {
        "input_ids": [0, 5, 6, 7], "loss_mask": [0, 1, 1, 1]}
    assert tokenize_example({"input_ids": [9]}, tok) == {"input_ids": [9], "loss_mask": [0]}
    assert tokenize_example({"input_ids": [0, 5, 6, 7], "loss_mask": [0, 0, 1, 0]}, tok) == {
        "input_ids": [0, 5, 6, 7], "loss_mask": [0, 0, 1, 0]}
    # Nothing is added or re-tokenized: no BOS prepended, ids passed through.
    assert tokenize_example({"input_ids": [5, 6], "loss_mask": [1, 1]}, tok) == {
        "input_ids": [5, 6], "loss_mask": [1, 1]}


def test_tokenize_errors_name_where(tok):
    with pytest.raises(formats.DataError, match=r"^f\.jsonl:4: 'input_ids' is empty"):
        tokenize_example({"input_ids": []}, tok, where="f.jsonl:4")
    with pytest.raises(formats.DataError, match=r"^f\.jsonl:5: the last message must be the assistant"):
        tokenize_example({"messages": [user("Q")]}, tok, where="f.jsonl:5")
