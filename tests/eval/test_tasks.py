"""HumanEval through the sandbox, pass@k against combinatorics, answer scoring, evaluate --task, TaskEval."""
import itertools
import json
import math
import sys
import time
from fractions import Fraction

import pytest

from r1jax.eval import evaluate, task_eval
from r1jax.train import run_config
from r1jax.eval.tasks import answers, humaneval, runner, sandbox


@pytest.fixture(scope="module")
def problems():
    return humaneval.load_problems()


def _fenced(code: str) -> str:
    """An R1-style answer around a code block (what follows </think>)."""
    return f"Here is the implementation:\n\n```python\n{code}\n```\n\nIt runs in linear time."


# -- HumanEval ---------------------------------------------------------------------------------------

def test_canonical_solutions_pass_wrong_ones_fail(problems):
    """All 164 canonical solutions pass (pool of 4 sandboxes; ~6 s on 2 loaded cores); a stub and
    a subtly wrong solution fail."""
    assert len(problems) == 164 and len({p["task_id"] for p in problems}) == 164
    progs = [humaneval.program(p, p["canonical_solution"]) for p in problems]
    stubs = humaneval.spread(problems, 8)
    progs += [humaneval.program(p, "    raise NotImplementedError\n") for p in stubs]
    he0 = problems[0]
    assert he0["entry_point"] == "has_close_elements"
    off_by_one = he0["canonical_solution"].replace("idx != idx2", "idx <= idx2")   # compares x with itself
    assert off_by_one != he0["canonical_solution"]
    progs.append(humaneval.program(he0, off_by_one))
    t0 = time.perf_counter()
    results = sandbox.run_many(progs, sandbox.Limits(timeout_s=20), workers=4)
    wall = time.perf_counter() - t0
    bad = [(p["task_id"], r.status, r.stderr_tail[-300:]) for p, r in zip(problems, results) if not r.passed]
    assert bad == []
    assert [r.status for r in results[164:]] == ["failed"] * 9
    print(f"\n164 canonical + 9 wrong HumanEval programs: {wall:.1f} s with 4 sandboxes")


def test_extract_code_from_r1_answers(problems):
    """Each extraction case is checked by running the resulting program in the sandbox."""
    he10 = problems[10]                      # make_palindrome; its prompt defines is_palindrome
    assert he10["entry_point"] == "make_palindrome" and "def is_palindrome" in he10["prompt"]
    full = "def make_palindrome(string: str) -> str:\n" + he10["canonical_solution"]
    cases = [
        # a full definition that uses the prompt's helper: the prompt stays in front
        (he10, _fenced(full), True),
        # a usage example after the definition block: the defining block is taken
        (he10, _fenced(full) + "\nExample:\n```python\nprint(make_palindrome('cat'))\n```", True),
        # the body only, as a fenced continuation
        (problems[0], _fenced(problems[0]["canonical_solution"]), True),
        # no fence: a raw continuation of the prompt
        (problems[0], problems[0]["canonical_solution"], True),
        # demo code under a main guard would block on input(): it is cut off
        (he10, _fenced(full + "\n\nif __name__ == '__main__':\n    print(make_palindrome(input()))"), True),
        # the last defining block wins over an earlier wrong attempt
        (he10, _fenced("def make_palindrome(s):\n    return s") + "\nFixed:\n" + _fenced(full), True),
        (he10, _fenced(full) + "\nSimpler:\n" + _fenced("def make_palindrome(string):\n    return string"),
         False),
        # prose without code fails (it is not Python)
        (problems[0], "I cannot solve this.", False),
    ]
    progs = [humaneval.program(p, humaneval.extract_code(ans, p["entry_point"])) for p, ans, _ in cases]
    results = sandbox.run_many(progs, sandbox.Limits(timeout_s=10), workers=4)
    errors = [r.stderr_tail[-200:] for r in results]
    assert [r.passed for r in results] == [want for _, _, want in cases], errors
    assert "input" not in humaneval.extract_code(cases[4][1], "make_palindrome")


def test_pass_at_k_against_combinatorics():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                # brute force: the fraction of k-subsets of the n samples holding a passing one
                subsets = list(itertools.combinations(range(n), k))
                brute = sum(any(i < c for i in s) for s in subsets) / len(subsets)
                assert humaneval.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
    for n, c, k in [(200, 3, 100), (200, 0, 10), (1000, 999, 1), (500, 17, 250)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert humaneval.pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)
    assert humaneval.mean_pass_at_k([(4, 1), (4, 0), (2, 2)], [1, 2, 4]) == pytest.approx(
        {"pass@1": (0.25 + 0 + 1) / 3, "pass@2": (0.5 + 0 + 1) / 3})   # pass@4 needs n >= 4 everywhere
    with pytest.raises(ValueError, match="n=3 c=4"):
        humaneval.pass_at_k(3, 4, 1)


# -- answers -------------------------------------------------------------------------------------------

def test_exact_match_and_contains():
    assert answers.exact_match("  Paris\n", "paris")
    assert answers.exact_match("New   York\tCity", "new york city")
    assert not answers.exact_match("Paris", "paris", ignore_case=False)
    assert not answers.exact_match("Paris.", "Paris")
    assert answers.contains("The capital is  PARIS, of course.", "capital is paris")
    assert not answers.contains("The capital is Paris", "Lyon")
    assert not answers.contains("anything", "   ")                 # an empty reference never matches


@pytest.mark.parametrize("text, box", [
    (r"so \boxed{\frac{1}{\sqrt{2}}}.", r"\frac{1}{\sqrt{2}}"),          # nested braces
    (r"first \boxed{3}, then corrected: \boxed{4}", "4"),               # the last box
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),                                 # escaped braces do not count
    (r"\boxed{2} then \boxed{unclosed", "2"),                           # an unclosed last box is skipped
    (r"$\boxed 7$", "7"),                                               # brace-less form
    (r"\fbox{x+1}", "x+1"),
    (r"\boxeddots{3}", None),                                           # not a box command
    ("no box here", None),
])
def test_last_boxed(text, box):
    assert answers.last_boxed(text) == box


@pytest.mark.parametrize("pred, ref, want", [
    (r"\boxed{\frac{1}{2}}", "0.5", True),
    (r"\boxed{\dfrac{3}{4}}", "3/4", True),
    (r"\boxed{\frac34}", r"\boxed{0.75}", True),
    (r"\boxed{2.0}", "2", True),
    (r"\boxed{\$1,000}", "1000", True),
    (r"\boxed{-\frac{1}{2}}", "-0.5", True),
    (r"\boxed{\left( 3, 4 \right)}", "(3,4)", True),
    (r"\boxed{90^\circ}", "90", True),
    (r"\boxed{\text{(B)}}", "(B)", True),
    (r"\boxed{\frac{\frac{1}{2}}{3}}", "(1/2)/3", True),
    (r"\boxed{x + 1}", "x+1", True),
    (r"\boxed{1}", "2", False),
    (r"\boxed{x+1}", "1+x", False),                                     # no algebra: documented
    (r"The answer is 1/2", "1/2", False),                               # no box, no match
    (r"\boxed{1/0}", "1/0", True),                                      # not a number: string compare
])
def test_boxed_match(pred, ref, want):
    assert answers.boxed_match(pred, ref) is want


# -- evaluate --task with an injected generate function -----------------------------------------------

class ScriptedModel:
    """Stands in for generation: answers each prompt from a table, per sample index."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        seen, out = {}, []
        for p in prompts:
            i = seen[p] = seen.get(p, -1) + 1
            ans = self.table[p][i]
            out.append({"text": f"<think>\nhmm\n</think>\n\n{ans}", "reasoning": "hmm", "answer": ans,
                        "n_tokens": 7, "finish_reason": "stop"})
        return out


def test_evaluate_task_humaneval_cli(problems, tmp_path, capsys):
    """6 problems x 2 samples: problem j's sample 0 is right iff j is even, sample 1 always wrong
    except for problem 0 -> pass@1 and pass@2 from the (n, c) counts by hand."""
    chosen = humaneval.spread(problems, 6)
    table = {}
    for j, p in enumerate(chosen):
        right = _fenced(f"def {p['entry_point']}" + p["prompt"].split(f"def {p['entry_point']}", 1)[1]
                        + p["canonical_solution"])
        wrong = _fenced(f"def {p['entry_point']}(*args):\n    return None")
        table[humaneval.chat_prompt(p)] = [right if j % 2 == 0 else wrong, right if j == 0 else wrong]
    model = ScriptedModel(table)
    out = tmp_path / "samples.jsonl"
    rc = evaluate.main(["--task", "humaneval", "--checkpoint", "unused", "--limit", "6", "--n_samples", "2",
                        "--k", "1,2", "--output", str(out), "--json", "--timeout", "10"], generate_fn=model)
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    counts = [(2, 2), (2, 0), (2, 1), (2, 0), (2, 1), (2, 0)]
    assert summary["pass@1"] == pytest.approx(sum(c / 2 for _, c in counts) / 6)
    assert summary["pass@2"] == pytest.approx(3 / 6)
    assert summary["items"] == 6 and summary["samples"] == 12
    assert len(model.calls) == 1 and len(model.calls[0]) == 12        # one batched generate call
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["sample"]) for r in records] == [(p["task_id"], s) for p in chosen for s in (0, 1)]
    assert [r["passed"] for r in records] == [True, True, False, False, True, False, False, False,
                                              True, False, False, False]
    assert all(r["finish_reason"] == "stop" and r["reasoning"] == "hmm" for r in records)


def test_evaluate_task_reference_cli(tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    rows = [{"question": "1/2 + 1/4?", "answer": r"\frac{3}{4}"}, {"prompt": "2+2?", "output": "4"},
            {"input": "capital of France?", "reference": "Paris"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = {"1/2 + 1/4?": [r"It is \boxed{0.75}."], "2+2?": [r"\boxed{5}"],
             "capital of France?": ["paris"]}
    got = {}
    for task in ("boxed", "exact_match", "contains"):
        rc = evaluate.main(["--task", task, "--checkpoint", "unused", "--data", str(data), "--json"],
                           generate_fn=ScriptedModel(table))
        assert rc == 0
        got[task] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"]
    # boxed: 0.75 == 3/4 yes, 5 != 4, no box for paris; exact: only "paris"; contains: "paris" too
    assert got == pytest.approx({"boxed": 1 / 3, "exact_match": 1 / 3, "contains": 1 / 3})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": "q2"}\n')
    rc = evaluate.main(["--task", "exact_match", "--checkpoint", "unused", "--data", str(bad)],
                       generate_fn=ScriptedModel({}))
    assert rc == 2 and f"{bad}:2: needs a string reference" in capsys.readouterr().err


def test_task_eval_from_run_config(problems):
    c = run_config.defaults()
    c.train.task_eval_every = 50
    c.task.limit = 3
    c.task.n_samples = 2
    c.task.k = "1,2"
    run_config.validate(c)
    ev = task_eval.TaskEval(c)
    assert [it["id"] for it in ev.items] == [p["task_id"] for p in humaneval.spread(problems, 3)]
    table = {it["prompt"]: [_fenced(it["problem"]["prompt"] + it["problem"]["canonical_solution"]),
                            "no code"] for it in ev.items}
    metrics = ev(ScriptedModel(table))
    assert metrics["task/humaneval_pass@1"] == pytest.approx(0.5)
    assert metrics["task/humaneval_pass@2"] == pytest.approx(1.0)
    assert metrics["task/humaneval_accuracy"] == pytest.approx(0.5)
    assert ev.sampling == {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 512, "seed": 0}
    for key, value, msg in [("task.name", "mbpp", "task.name='mbpp'"), ("task.k", "1,3", "task.k='1,3'"),
                            ("task.top_p", 0.0, "task.top_p"),
                            ("train.task_eval_every", -1, "task_eval_every")]:
        bad = run_config.defaults()
        bad.task.n_samples = 2
        section, name = key.split(".")
        bad[section][name] = value
        with pytest.raises(run_config.RunConfigError, match=msg):
            run_config.validate(bad)
    with pytest.raises(runner.TaskError, match="k values"):
        runner.TaskSettings(n_samples=2, ks=(3,))


def test_no_score_when_the_sandbox_is_broken(problems, tmp_path, capsys, monkeypatch):
    """A sandbox whose child fails before any program runs (as a broken prelude did: every program
    'failed', HumanEval read pass@1 0.0): evaluate --task humaneval and TaskEval refuse to score,
    with one error line naming the status and stderr tail, before generating anything and writing
    no records. Oracle: the injected failure (its exit status 1 and message) and the CLI's error exit
    code 2; tasks that run no code are unaffected."""
    monkeypatch.setattr(sandbox, "child_command", lambda limits_json, program: [
        sys.executable, "-I", "-c", "import sys; sys.exit('PermissionError: prelude broke')"])
    chosen = humaneval.spread(problems, 2)
    model = ScriptedModel({humaneval.chat_prompt(p): [_fenced(p["prompt"] + p["canonical_solution"])]
                           for p in chosen})
    out = tmp_path / "samples.jsonl"
    rc = evaluate.main(["--task", "humaneval", "--checkpoint", "unused", "--limit", "2",
                        "--output", str(out), "--json"], generate_fn=model)
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == "" and not out.exists() and model.calls == []
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("error: task humaneval: sandbox cannot run a trivial program"), err
    assert "status failed, exit code 1" in err and "prelude broke" in err and "no score reported" in err
    c = run_config.defaults()
    c.train.task_eval_every = 10
    c.task.limit = 2
    run_config.validate(c)
    with pytest.raises(runner.SandboxUnusable, match="status failed.*prelude broke"):
        task_eval.TaskEval(c)
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")
    rc = evaluate.main(["--task", "exact_match", "--checkpoint", "unused", "--data", str(data), "--json"],
                       generate_fn=ScriptedModel({"2+2?": ["4"]}))
    assert rc == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] == 1.0


def test_evaluate_task_end_to_end_on_a_tiny_checkpoint(problems, tmp_path, capsys):
    """The CLI generates with the checkpoint (r1jax.generate) and scores what it generated: the
    records hold exactly what generate_texts gives for the same prompts, called directly."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from r1jax.models import checkpoint
    from r1jax.inference import generate
    from r1jax.data import load_tokenizer
    from r1jax.models.deepseek_v3.transformer import Transformer
    from r1jax.models.registry import preset
    cfg = preset("tiny", dtype="float32", num_hidden_layers=2, n_routed_experts=4, n_group=2, topk_group=1)
    # random weights drawn by NumPy: 10x faster than the model's own init on CPU (129,280-row tables)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(3)
    nnx.replace_by_pure_dict(state, jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32) * 0.05), nnx.to_pure_dict(state)))
    model = nnx.merge(graphdef, state)
    ckpt = str(tmp_path / "ckpt")
    checkpoint.save_model(ckpt, cfg, checkpoint.numpy_params(model))
    out = tmp_path / "samples.jsonl"
    rc = evaluate.main(["--task", "humaneval", "--checkpoint", ckpt, "--limit", "2", "--max_new_tokens", "6",
                        "--temperature", "0", "--dtype", "float32", "--output", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    chosen = humaneval.spread(problems, 2)
    direct = generate.generate_texts(model, load_tokenizer(), [humaneval.chat_prompt(p) for p in chosen],
                                     generate.GenerationSettings(max_new_tokens=6, temperature=0.0))
    assert [r["id"] for r in records] == [p["task_id"] for p in chosen]
    for r, d in zip(records, direct):
        assert (r["reasoning"], r["answer"], r["n_tokens"], r["finish_reason"]) == (
            d["reasoning"], d["answer"], d["n_tokens"], d["finish_reason"])
        assert r["status"] in sandbox.STATUSES and not r["passed"]     # 6 random tokens solve nothing
    assert summary["pass@1"] == 0.0 and summary["samples"] == 2 and summary["checkpoint"] == ckpt
    # A prompt with no room for max_new_tokens within the tiny model's 1,024 positions: one line
    # naming the item (the first of the spread), no score, no records written.
    rc = evaluate.main(["--task", "humaneval", "--checkpoint", ckpt, "--limit", "2", "--max_new_tokens", "1000",
                        "--dtype", "float32", "--output", str(tmp_path / "none.jsonl"), "--json"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == "" and not (tmp_path / "none.jsonl").exists()
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith(f"error: task humaneval: item {chosen[0]['task_id']}: prompt of"), err
    assert "1024" in err and "Traceback" not in captured.err
