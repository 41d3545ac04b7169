"""GRPO rewards (r1jax/eval/rewards.py) on hand-written completions and rows.

Oracle everywhere: each case's reward (and each weighted total) is worked out by hand from the rules
in the module docstring and written down here; nothing is compared with the code's own output.
Two sandbox runs in all (code_tests: one passing, one failing program).
"""
import os
import sys
import textwrap

import pytest

from r1jax.data.errors import DataError
from r1jax.eval import rewards as R
from r1jax.eval.tasks import sandbox

EOS = "<｜end▁of▁sentence｜>"


def one(spec: str, completions, rows, prompts=None) -> list[float]:
    """The per-item rewards of the single function in `spec` (its totals, weight 1)."""
    prompts = prompts or ["q"] * len(completions)
    s = R.score(completions, rows, prompts, spec, workers=1)
    assert list(s.per_function) == [spec.split("@")[0].split(":")[0]]
    assert s.totals == list(s.per_function.values())[0] and s.problems == {list(s.per_function)[0]: 0}
    return s.totals


# -- completion parts -----------------------------------------------------------------------------------

def test_completion_parts():
    """Oracle: the body ends at the first end-of-sentence marker; the answer is what follows the
    first </think>, stripped; no </think> means no answer."""
    c = R.Completion("Let me add.\n</think>\n\nThe sum is \\boxed{4}.\n" + EOS)
    assert (c.reasoning, c.answer) == ("Let me add.\n", "The sum is \\boxed{4}.")
    c = R.Completion("I keep thinking and never stop")
    assert (c.reasoning, c.answer) == ("I keep thinking and never stop", "")
    c = R.Completion("Stopped without closing" + EOS)
    assert (c.reasoning, c.answer) == ("Stopped without closing", "")
    c = R.Completion("r\n</think>\n\nA" + EOS + "junk after the end </think> B")
    assert (c.body, c.answer) == ("r\n</think>\n\nA", "A")
    c = R.completion_of({"text": "r\n</think>\n\nA", "n_tokens": 7, "finish_reason": "length"})
    assert (c.num_tokens, c.truncated, c.answer) == (7, True, "A")
    assert R.completion_of({"text": "x", "n_tokens": 1, "finish_reason": "stop"}).truncated is False


# -- built-ins ------------------------------------------------------------------------------------------

def test_boxed_scores_the_answer_part_only():
    """Reference 1/2. Oracle by hand: 0.5 == 1/2 as exact fractions (1); a box in the reasoning
    only (0); no </think>, so no answer (0); the LAST box of the answer counts (1); 1/3 (0)."""
    completions = ["work\n</think>\n\nThus \\boxed{0.5}." + EOS,
                   "I think \\boxed{1/2}\n</think>\n\nThe answer is one half.",
                   "\\boxed{1/2} maybe, still thinking",
                   "x\n</think>\n\n\\boxed{1/3}, no wait: \\boxed{\\frac{1}{2}}",
                   "x\n</think>\n\n\\boxed{1/3}"]
    assert one("boxed", completions, [{"answer": "\\frac{1}{2}"}] * 5) == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_exact_match_and_contains_on_the_answer():
    """Reference "Paris". Oracle by hand: exact_match after stripping, collapsing whitespace and
    case-folding; contains needs the reference inside the answer, not the reasoning."""
    completions = ["hmm\n</think>\n\n  paris \n" + EOS,            # exact 1, contains 1
                   "hmm\n</think>\n\nThe capital is Paris.",       # exact 0, contains 1
                   "Paris? No.\n</think>\n\nLyon",                  # exact 0, contains 0
                   "Paris"]                                         # no answer: 0, 0
    rows = [{"answer": "Paris"}] * 4
    assert one("exact_match", completions, rows) == [1.0, 0.0, 0.0, 0.0]
    assert one("contains", completions, rows) == [1.0, 1.0, 0.0, 0.0]


def test_format_well_formed_and_malformed():
    """Oracle by hand, case by case (rule: one </think>, no <think>, non-blank reasoning and
    answer, not truncated; nothing after the end-of-sentence marker counts)."""
    cases = [(R.Completion("Reason.\n</think>\n\nAnswer." + EOS), 1.0),
             (R.Completion("Reason.\n</think>\n\nAnswer."), 1.0),                # marker optional
             (R.Completion("Reason only, never closed"), 0.0),                   # no </think>
             (R.Completion("a\n</think>\nb\n</think>\n\nc"), 0.0),               # two </think>
             (R.Completion("Reason.\n</think>\n\n  \n" + EOS), 0.0),             # empty answer
             (R.Completion(" \n</think>\n\nAnswer."), 0.0),                      # empty reasoning
             (R.Completion("<think>\nr\n</think>\n\nA"), 0.0),                   # <think> again
             (R.Completion("r\n</think>\n\nA partial answ", truncated=True), 0.0),
             (R.Completion("r\n</think>\n\nA" + EOS + "\n</think>"), 1.0)]       # after the end
    got = one("format", [c for c, _ in cases], [{}] * len(cases))
    assert got == [want for _, want in cases]


def test_length_penalty():
    """Budget 100 (length@100). Oracle: 0 up to 100 tokens, -(n-100)/100 above, -1 from 200 on;
    the default budget 4096 puts 6144 tokens at -0.5."""
    ns = [0, 100, 101, 150, 200, 350]
    comps = [R.Completion("r\n</think>\n\nA", num_tokens=n) for n in ns]
    assert one("length@100", comps, [{}] * 6) == [0.0, 0.0, -0.01, -0.5, -1.0, -1.0]
    assert one("length", [R.Completion("x", num_tokens=6144)], [{}]) == [-0.5]


def test_answer_code_extraction():
    """Oracle: the last fence (closed or not), else the whole answer; cut at a __main__ guard."""
    assert R.answer_code("a\n```python\nx = 1\n```\nb\n```py\ny = 2\n```\nc") == "y = 2\n"
    assert R.answer_code("```\nz = 3\nprint(z)") == "z = 3\nprint(z)"
    assert R.answer_code("w = 4\nif __name__ == '__main__':\n    main()\n") == "w = 4\n"


def test_code_tests_in_the_sandbox(monkeypatch):
    """Oracle: the hand-written programs below (last block, __main__ demo cut off, then the tests);
    add(a,b)=a+b passes the asserts (1), a-b fails them (0), no </think> runs nothing (0). The
    passing one would fail if the demo (reading input() from /dev/null) were kept."""
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
    good = ("Simple.\n</think>\n\nA first try:\n```python\ndef add(a, b):\n    return 0\n```\n"
            "Better:\n```python\ndef add(a, b):\n    return a + b\n\nif __name__ == \"__main__\":\n"
            "    print(add(int(input()), 1))\n```\n" + EOS)
    bad = "r\n</think>\n\n```py\ndef add(a, b):\n    return a - b\n```"
    unfinished = "def add(a, b): return a + b"
    ran = []
    real = sandbox.run_many

    def spy(programs, limits, workers):
        ran.extend(programs)
        return real(programs, limits, workers)
    monkeypatch.setattr(sandbox, "run_many", spy)
    s = R.score([good, bad, unfinished], [{"tests": tests}] * 3, ["p"] * 3, "code_tests:2",
                workers=2, limits=sandbox.Limits(timeout_s=10))
    assert ran == ["def add(a, b):\n    return a + b\n\n\n" + tests,
                   "def add(a, b):\n    return a - b\n\n\n" + tests]
    assert s.per_function == {"code_tests": [1.0, 0.0, 0.0]} and s.totals == [2.0, 0.0, 0.0]
    assert s.problems == {"code_tests": 0} and s.errors == {}


# -- the spec ---------------------------------------------------------------------------------------------

def test_parse_rewards_valid():
    """Oracle: the documented syntax NAME[@BUDGET][:WEIGHT], weight 1.0 when absent."""
    assert R.parse_rewards("boxed:1.0,format:0.2") == [("boxed", 1.0), ("format", 0.2)]
    assert R.parse_rewards(" length@2048 : 0.1 , contains ") == [("length@2048", 0.1), ("contains", 1.0)]
    assert R.parse_rewards("format:0,exact_match:1e-1,code_tests") == [
        ("format", 0.0), ("exact_match", 0.1), ("code_tests", 1.0)]


@pytest.mark.parametrize("spec, message", [
    ("", "reward spec is empty; built-ins: boxed, code_tests, contains, exact_match, format, length"),
    ("boxed,,format", "reward spec 'boxed,,format': entry 2 is empty"),
    ("boxed,", "entry 2 is empty"),
    ("boxd:1", "unknown reward 'boxd'; built-ins: boxed, code_tests, contains, exact_match, format, length"),
    ("boxed:-1", "reward 'boxed:-1': weight '-1' must be finite and >= 0"),
    ("boxed:inf", "reward 'boxed:inf': weight 'inf' must be finite and >= 0"),
    ("format:high", "reward 'format:high': bad weight 'high'"),
    ("boxed:1,format:0.2,boxed:3", "reward 'boxed:3': boxed is named twice"),
    ("length@100,length:2", "reward 'length:2': length is named twice"),
    ("boxed@3", "reward 'boxed@3': only length takes a parameter"),
    ("length@0", "the length budget must be a positive integer number of tokens, got '0'"),
    ("length@1.5", "got '1.5'"),
    ("a:b:c", "reward 'a:b:c': write NAME[@BUDGET][:WEIGHT]"),
    ("no_such_pkg_r1jax.rw.fn:0.5", "cannot import module 'no_such_pkg_r1jax.rw': ModuleNotFoundError"),
    ("os.path.no_such_function", "module 'os.path' has no function 'no_such_function'"),
])
def test_parse_rewards_invalid(spec, message):
    """Oracle: the one-line message the module docstring promises for each mistake."""
    with pytest.raises(R.RewardError) as e:
        R.parse_rewards(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


# -- user functions, weighted totals, problems ---------------------------------------------------------------

USER_MODULE = "r1jax_test_user_rewards"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / f"{USER_MODULE}.py").write_text(textwrap.dedent("""
        def prompt_len(prompt, completion, row):
            return float(len(prompt))
        def answer_len(prompt, completion, row):
            return len(completion.answer)          # an int is a number too
        def boom(prompt, completion, row):
            if row.get("explode"):
                raise ValueError("no score for " + prompt)
            return 1.0
        def wordy(prompt, completion, row):
            return "high"
        def unbounded(prompt, completion, row):
            return float("inf") if row["answer"] == "7" else 0.5
        def pid(prompt, completion, row):
            import os
            return os.getpid()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield USER_MODULE
    sys.modules.pop(USER_MODULE, None)


PROMPTS = ["2+2?", "Capital of France?", "x"]
ROWS = [{"answer": "4"}, {"answer": "Paris", "explode": True}, {"answer": "7"}]
COMPLETIONS = ["Add.\n</think>\n\n\\boxed{4}", "Hmm.\n</think>\n\nParis", "no end"]
M = USER_MODULE
SPEC = f"boxed:2,format:0.5,{M}.prompt_len:0.25,{M}.answer_len:0,{M}.boom,{M}.wordy:3,{M}.unbounded:2"
# By hand, per item:       boxed format prompt_len answer_len boom  wordy unbounded
#   0 "2+2?"               1     1      4          9          1     -     0.5
#   1 "Capital of France?" 0     1      18         5          -     -     0.5
#   2 "x"                  0     0      1          0          1     -     -      (- = a problem: 0)
# totals: 0: 2+0.5+1+0+1+0+1 = 5.5   1: 0+0.5+4.5+0+0+0+1 = 6.0   2: 0+0+0.25+0+1+0+0 = 1.25
WANT_PER = {"boxed": [1.0, 0.0, 0.0], "format": [1.0, 1.0, 0.0], f"{M}.prompt_len": [4.0, 18.0, 1.0],
            f"{M}.answer_len": [9.0, 5.0, 0.0], f"{M}.boom": [1.0, 0.0, 1.0], f"{M}.wordy": [0.0, 0.0, 0.0],
            f"{M}.unbounded": [0.5, 0.5, 0.0]}
WANT_ERRORS = {f"{M}.boom": "item 1: ValueError: no score for Capital of France?",
               f"{M}.wordy": "item 0: returned str 'high', not a finite number",
               f"{M}.unbounded": "item 2: returned float inf, not a finite number"}


def test_user_functions_weighted_totals_and_problems(user_module):
    """Oracle: the table above, worked out by hand; a raise, a string and an inf each score 0 for
    their item, are counted, and the first message is kept; the call does not raise."""
    s = R.score(COMPLETIONS, ROWS, PROMPTS, R.parse_rewards(SPEC), workers=1)
    assert s.totals == [5.5, 6.0, 1.25]
    assert s.per_function == WANT_PER
    assert s.problems == {"boxed": 0, "format": 0, f"{M}.prompt_len": 0, f"{M}.answer_len": 0,
                          f"{M}.boom": 1, f"{M}.wordy": 3, f"{M}.unbounded": 1}
    assert s.errors == WANT_ERRORS


def test_user_functions_in_the_process_pool(user_module):
    """The same three items repeated 22 times (66 >= POOL_MIN_ITEMS) on 2 spawned workers. Oracle:
    the hand-worked table above, repeated; problems 22x / 66x / 22x; first messages unchanged; a
    function returning its process id shows the pool ran them outside this process."""
    k = 22
    assert 3 * k >= R.POOL_MIN_ITEMS
    s = R.score(COMPLETIONS * k, ROWS * k, PROMPTS * k, SPEC, workers=2)
    assert s.totals == [5.5, 6.0, 1.25] * k
    assert s.per_function == {name: v * k for name, v in WANT_PER.items()}
    assert s.problems[f"{M}.boom"] == k and s.problems[f"{M}.wordy"] == 3 * k
    assert s.problems[f"{M}.unbounded"] == k and s.problems["boxed"] == 0
    assert s.errors == WANT_ERRORS
    # where they ran (weight 0: logged, not rewarded): in other processes, and inline below 64 items
    pids = R.score(COMPLETIONS * k, ROWS * k, PROMPTS * k, f"{M}.pid:0", workers=2)
    assert os.getpid() not in pids.per_function[f"{M}.pid"] and pids.totals == [0.0] * 3 * k
    inline = R.score(COMPLETIONS, ROWS, PROMPTS, f"{M}.pid:0", workers=2)
    assert inline.per_function[f"{M}.pid"] == [float(os.getpid())] * 3


# -- data errors -----------------------------------------------------------------------------------------------

def test_data_errors_name_the_item():
    """Oracle: a row without the field a reward needs is an error naming the row and field (raised
    before anything is scored); so are a non-string answer, a missing token count for length and
    mismatched lengths."""
    with pytest.raises(DataError, match=r"^rows\[1\]: missing field 'answer', which the boxed reward needs$"):
        R.score(["a", "b"], [{"answer": "1"}, {"question": "q"}], ["p", "p"], "format,boxed")
    with pytest.raises(R.RewardError, match=r"^rows\[0\]: missing field 'tests', which the code_tests"):
        R.score(["a"], [{"answer": "1"}], ["p"], "code_tests")
    with pytest.raises(R.RewardError, match=r"^rows\[0\]: field 'answer' must be a string .* got int$"):
        R.score(["a"], [{"answer": 4}], ["p"], "contains")
    with pytest.raises(R.RewardError, match=r"^completions\[1\]: the length reward needs num_tokens"):
        R.score([R.Completion("a", 3), "b"], [{}, {}], ["p", "p"], "length")
    with pytest.raises(R.RewardError, match="2 completions, 1 rows, 2 prompts"):
        R.score(["a", "b"], [{}], ["p", "p"], "format")
    with pytest.raises(R.RewardError, match=r"reward 'format': weight -1 must be finite and >= 0"):
        R.score(["a"], [{}], ["p"], [("format", -1)])
