"""The R1 chat format for training: `tokenize_example` ids and loss mask per row
format, the generation prompt, and the prompt/target boundary.

The reference is always a hand-written rendered string encoded by the tokenizer, never the renderer
under test. A case is written twice: as the full string and as consecutive (text, trained) pieces
whose concatenation is that string; the last piece of a chat row is its final target. The expected
ids are each piece encoded on its own, concatenated; each piece's tokens take its trained flag. The
tokens before the final target must be the whole-string encoding of the hand-written generation
prompt (all pieces but the last), as generation encodes it. The masked tokens, decoded, must be
exactly the trained pieces joined.
"""
import dataclasses

import pytest

from r1jax.data import chat, formats
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.data.chat import tokenize_example

BOS_ID, EOS_ID, THINK_ID, THINK_CLOSE_ID, ASSISTANT_ID, NL_ID, NL2_ID = 0, 1, 128798, 128799, 128804, 201, 271


@pytest.fixture(scope="module")
def tok():
    return tokenizer_lib.load_tokenizer()


def enc(tok, text):
    return tokenizer_lib.encode(tok, text, add_bos=True)


def enc_alone(tok, text):
    return tokenizer_lib.encode(tok, text, add_bos=False)


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def masked_text(tok, out):
    return decode(tok, [t for t, m in zip(out["input_ids"], out["loss_mask"], strict=True) if m])


def expected(tok, full, pieces):
    """(ids, mask) the hand-written pieces imply: each piece encoded alone, concatenated."""
    assert "".join(text for text, _ in pieces) == full  # the two hand-written forms agree
    ids, mask = [], []
    for text, trained in pieces:
        piece = enc_alone(tok, text)
        ids += piece
        mask += [int(trained)] * len(piece)
    return ids, mask


def check(tok, out, full, pieces):
    assert set(out) == {"input_ids", "loss_mask"}
    ids, mask = expected(tok, full, pieces)
    assert out["input_ids"] == ids
    assert out["loss_mask"] == mask
    assert masked_text(tok, out) == "".join(text for text, trained in pieces if trained)
    # The tokens before the final target are the generation prompt's whole-string encoding.
    prompt = enc(tok, "".join(text for text, _ in pieces[:-1]))
    assert out["input_ids"][:len(prompt)] == prompt
    assert len(out["input_ids"]) == len(prompt) + len(enc_alone(tok, pieces[-1][0]))


@dataclasses.dataclass(frozen=True)
class Case:
    row: dict
    full: str
    pieces: tuple[tuple[str, bool], ...]


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


MULTI_PIECES = (("<｜begin▁of▁sentence｜>You are terse.<｜User｜>Hi there<｜Assistant｜>", False),
                ("Hello!<｜end▁of▁sentence｜>", False),
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
    # Earlier turns: answer only (reasoning stripped, as the released template renders history),
    # never trained in the row (--train_all_turns makes one row per turn: `chat.turn_examples`).
    "messages_multi_turn": Case({"messages": MULTI_MESSAGES}, MULTI_FULL, MULTI_PIECES),
    "messages_multi_turn_history_think_in_content": Case(
        {"messages": [MULTI_MESSAGES[0], user("Hi there"),
                      assistant("<think>\nA greeting; greet back.\n</think>\n\nHello!"),
                      user("Name a prime."), assistant("2", reasoning="The smallest prime is 2.")]},
        MULTI_FULL, MULTI_PIECES),
    "prompt_completion_think": Case(
        {"prompt": "Say hi in Español.", "completion": "<think>\nSpanish: hola.\n</think>\n\n¡Hola!"},
        "<｜begin▁of▁sentence｜><｜User｜>Say hi in Español.<｜Assistant｜><think>\nSpanish: hola.\n</think>\n\n"
        "¡Hola!<｜end▁of▁sentence｜>",
        (("<｜begin▁of▁sentence｜><｜User｜>Say hi in Español.<｜Assistant｜><think>\n", False),
         ("Spanish: hola.\n</think>\n\n¡Hola!<｜end▁of▁sentence｜>", True))),
    "prompt_completion_think_unspaced": Case(
        {"prompt": "Q?", "completion": "<think>r</think>A"},
        "<｜begin▁of▁sentence｜><｜User｜>Q?<｜Assistant｜><think>\nr\n</think>\n\nA<｜end▁of▁sentence｜>",
        (("<｜begin▁of▁sentence｜><｜User｜>Q?<｜Assistant｜><think>\n", False),
         ("r\n</think>\n\nA<｜end▁of▁sentence｜>", True))),
    # Extra keys and a category change nothing in the rendering.
    "extra_keys_ignored": Case(
        {"messages": [user("What is 2+2?"), assistant("2 + 2 = 4.", reasoning="Add two and two: four.")],
         "category": "math", "id": 17},
        SINGLE_FULL, SINGLE_PIECES),
    # A history answer starting with a space: the special token before it blocks any merge.
    "history_answer_leading_space": Case(
        {"messages": [user("A"), assistant(" b"), user("C"), assistant("d", reasoning="e")]},
        "<｜begin▁of▁sentence｜><｜User｜>A<｜Assistant｜> b<｜end▁of▁sentence｜><｜User｜>C<｜Assistant｜><think>\n"
        "e\n</think>\n\nd<｜end▁of▁sentence｜>",
        (("<｜begin▁of▁sentence｜><｜User｜>A<｜Assistant｜>", False), (" b<｜end▁of▁sentence｜>", False),
         ("<｜User｜>C<｜Assistant｜><think>\n", False), ("e\n</think>\n\nd<｜end▁of▁sentence｜>", True))),
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
    out = tokenize_example(case.row, tok)
    check(tok, out, case.full, case.pieces)


def test_accepts_a_parsed_example(tok):
    case = CASES["messages_multi_turn"]
    ex = formats.parse_row(case.row, "f.jsonl:3")
    check(tok, tokenize_example(ex, tok), case.full, case.pieces)


def test_history_turns_untrained(tok):
    out = tokenize_example({"messages": MULTI_MESSAGES}, tok)
    assert masked_text(tok, out) == "The smallest prime is 2.\n</think>\n\n2<｜end▁of▁sentence｜>"
    assert [t for t, m in zip(out["input_ids"], out["loss_mask"]) if m].count(EOS_ID) == 1
    assert "greet back" not in decode(tok, out["input_ids"])  # the history's reasoning is nowhere


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


# ---- the prompt/target boundary ------------------------------------------------------------
# The prompt ends with "<think>\n". When the target starts with "\n" (always so with no reasoning:
# "\n</think>"), or with " \n", one encoding of the whole string would merge the prompt's last "\n"
# with it ("\n\n" = 271, "\n \n" = 77968), so the training ids would not start with the generation
# prompt's. Prompt and target are encoded apart: the prompt keeps its "\n", the target its own.

BOUNDARY = {
    "prompt_completion_no_think": (
        {"prompt": "Say hi.", "completion": "hi"},
        "<｜begin▁of▁sentence｜><｜User｜>Say hi.<｜Assistant｜><think>\n", "\n</think>\n\nhi<｜end▁of▁sentence｜>"),
    "input_output": (
        {"input": "Ping", "output": "Pong"},
        "<｜begin▁of▁sentence｜><｜User｜>Ping<｜Assistant｜><think>\n", "\n</think>\n\nPong<｜end▁of▁sentence｜>"),
    "messages_no_reasoning": (
        {"messages": [user("Q"), assistant("A")]},
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n", "\n</think>\n\nA<｜end▁of▁sentence｜>"),
    "messages_empty_reasoning_content": (
        {"messages": [user("Q"), assistant("A", reasoning="")]},
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n", "\n</think>\n\nA<｜end▁of▁sentence｜>"),
    "messages_system_multi_turn_no_reasoning": (
        {"messages": [{"role": "system", "content": "S"}, user("Q1"), assistant("A1"), user("Q2"),
                      assistant("A2")]},
        "<｜begin▁of▁sentence｜>S<｜User｜>Q1<｜Assistant｜>A1<｜end▁of▁sentence｜><｜User｜>Q2<｜Assistant｜><think>\n",
        "\n</think>\n\nA2<｜end▁of▁sentence｜>"),
    "reasoning_leading_newline": (
        {"messages": [user("Q"), assistant("A", reasoning="\nfoo")]},
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n", "\nfoo\n</think>\n\nA<｜end▁of▁sentence｜>"),
    "reasoning_leading_space_newline": (
        {"messages": [user("Q"), assistant("A", reasoning=" \nfoo")]},
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\n", " \nfoo\n</think>\n\nA<｜end▁of▁sentence｜>"),
}


@pytest.mark.parametrize("name", BOUNDARY)
def test_boundary_prompt_ids_then_target_ids(tok, name):
    """Oracle: the hand-written generation prompt encoded whole (as generation does) followed by the
    hand-written target encoded alone; and that one encoding of the whole row would differ."""
    row, prompt, target = BOUNDARY[name]
    out = tokenize_example(row, tok)
    prompt_ids, target_ids = enc(tok, prompt), enc_alone(tok, target)
    assert prompt_ids[-3:] == [ASSISTANT_ID, THINK_ID, NL_ID]
    assert out["input_ids"][:len(prompt_ids)] == prompt_ids
    assert out["input_ids"][len(prompt_ids):] == target_ids
    assert out["loss_mask"] == [0] * len(prompt_ids) + [1] * len(target_ids)
    assert decode(tok, target_ids) == target
    assert out["input_ids"] != enc(tok, prompt + target)  # the single encoding merges at the boundary
    assert chat.prompt_ids(formats.parse_row(row, "x:1"), tok) == prompt_ids


def test_no_reasoning_target_starts_with_its_own_newline(tok):
    """Oracle: hand-written ids. Generation's prompt ends "<think>", "\n"; the row continues with the
    "\n" before "</think>" as a token of its own, then "</think>", "\n\n", the answer, EOS."""
    out = tokenize_example({"prompt": "Say hi.", "completion": "hi"}, tok)
    ids, mask = out["input_ids"], out["loss_mask"]
    at = ids.index(THINK_ID)
    assert ids[at - 1:at + 5] == [ASSISTANT_ID, THINK_ID, NL_ID, NL_ID, THINK_CLOSE_ID, NL2_ID]
    assert mask[:at + 2] == [0] * (at + 2) and mask[at + 2:] == [1] * (len(ids) - at - 2)
    assert ids[at + 5:] == enc_alone(tok, "hi") + [EOS_ID]


def test_think_form_strips_leading_newlines(tok):
    # A <think> block's reasoning loses its leading/trailing "\n"; the same reasoning given as
    # reasoning_content is kept verbatim (see above).
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


# ---- generation and training agree ----------------------------------------------------------

@pytest.mark.parametrize("all_turns", [False, True])
@pytest.mark.parametrize("name", [*BOUNDARY, *CASES])
def test_generation_feeds_the_ids_training_rows_start_with(tok, monkeypatch, name, all_turns):
    """Oracle: the ids `generate.generate_texts` hands the model (captured in place of the model),
    for the row's conversation without its final turn, equal the whole-string encoding of the
    rendered generation prompt, and the training row of the full conversation starts with them
    followed by only trained tokens. With all_turns, the same holds for every turn example
    (`chat.turn_examples`, --train_all_turns' rows): its history is what generation is given."""
    from r1jax.inference import generate
    row = BOUNDARY[name][0] if name in BOUNDARY else CASES[name].row
    example = formats.parse_row(row, "x:1")
    for ex in chat.turn_examples(example) if all_turns else [example]:
        history = [{"role": m.role, "content": m.content} for m in ex.messages[:-1]]
        fed = []
        monkeypatch.setattr(generate, "generate_ids", lambda model, prompts, *a, **k: fed.extend(
            list(p) for p in prompts) or [{"tokens": [], "finish_reason": "length", "text": ""} for _ in prompts])
        generate.generate_texts(None, tok, [history], generate.GenerationSettings(eos_token_ids=(EOS_ID,)))
        assert fed == [enc(tok, generate.render_prompt(history))]
        out = tokenize_example(ex, tok)
        n = len(fed[0])
        assert out["input_ids"][:n] == fed[0]
        assert out["loss_mask"] == [0] * n + [1] * (len(out["input_ids"]) - n)


# ---- --train_all_turns: one example per assistant turn ------------------------------------------

THREE_TURNS = [
    {"role": "system", "content": "Be exact."},
    user("What is 2+2?"), assistant("4", reasoning="Two plus two."),
    user("And 3+3?"), assistant("6"),
    user("Name a prime."), assistant(" 7", reasoning="\nSeven is prime."),
]
# Per turn: the hand-written generation prompt for its history, then its hand-written target.
THREE_TURN_ROWS = [
    ("<｜begin▁of▁sentence｜>Be exact.<｜User｜>What is 2+2?<｜Assistant｜><think>\n",
     "Two plus two.\n</think>\n\n4<｜end▁of▁sentence｜>"),
    ("<｜begin▁of▁sentence｜>Be exact.<｜User｜>What is 2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>"
     "<｜User｜>And 3+3?<｜Assistant｜><think>\n",
     "\n</think>\n\n6<｜end▁of▁sentence｜>"),
    ("<｜begin▁of▁sentence｜>Be exact.<｜User｜>What is 2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>"
     "<｜User｜>And 3+3?<｜Assistant｜>6<｜end▁of▁sentence｜><｜User｜>Name a prime.<｜Assistant｜><think>\n",
     "\nSeven is prime.\n</think>\n\n 7<｜end▁of▁sentence｜>"),
]


def test_turn_examples_each_a_row_with_its_own_generation_prompt(tok):
    """Oracle: per turn, the hand-written generation prompt for its history encoded whole (as
    generation encodes it: BOS added, special tokens split off) then the hand-written target encoded
    alone, the mask 0 then 1; the examples are the conversation's prefixes, in order."""
    ex = formats.parse_row({"messages": THREE_TURNS, "category": "math"}, "f.jsonl:7")
    turns = chat.turn_examples(ex)
    assert [t.source for t in turns] == ["f.jsonl:7 turn 1", "f.jsonl:7 turn 2", "f.jsonl:7 turn 3"]
    assert [t.messages for t in turns] == [ex.messages[:3], ex.messages[:5], ex.messages]
    assert {t.category for t in turns} == {"math"}
    for turn, (prompt, target) in zip(turns, THREE_TURN_ROWS, strict=True):
        out = tokenize_example(turn, tok)
        prompt_ids, target_ids = enc(tok, prompt), enc_alone(tok, target)
        assert out["input_ids"] == prompt_ids + target_ids, turn.source
        assert out["loss_mask"] == [0] * len(prompt_ids) + [1] * len(target_ids)
        assert masked_text(tok, out) == target


def test_turn_examples_of_other_rows_unchanged():
    """Oracle: by hand. One assistant turn, text and input_ids rows: the example itself; an assistant
    turn before the first user message is context, not an example (its row would have no user)."""
    for row in ({"messages": [user("Q"), assistant("A")]}, {"prompt": "P", "completion": "C"},
                {"text": "t"}, {"input_ids": [1, 2]},
                {"messages": [assistant("Hi, ask me."), user("Q"), assistant("A")]}):
        ex = formats.parse_row(row, "f:1")
        assert chat.turn_examples(ex) == [ex]
    ex = formats.parse_row({"messages": [assistant("Hi"), user("Q"), assistant("A"), user("R"),
                                         assistant("B")]}, "f:2")
    assert [t.messages[-1].content for t in chat.turn_examples(ex)] == ["A", "B"]
    assert [len(t.messages) for t in chat.turn_examples(ex)] == [3, 5]
