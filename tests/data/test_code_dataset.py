"""The bundled code dataset: built from the standard library, deduplicated, every row a valid R1
chat example, and HumanEval (the held-out benchmark) kept out by the n-gram overlap check."""
import json
import textwrap

from r1jax.data import code_dataset, load_tokenizer, read_examples, tokenize_example


def test_stdlib_dataset_is_valid_and_deduplicated(tmp_path):
    out = tmp_path / "code.jsonl"
    report = code_dataset.build(str(out))
    rows = list(read_examples([str(out)], strict=True))
    assert len(rows) == report["examples"] > 1000
    answers = [r.messages[-1].content for r in rows]
    assert len(set(answers)) == len(answers)
    assert report["functions"] == report["examples"] + report["duplicates"] + report["humaneval_overlap"]
    tok = load_tokenizer()
    ex = tokenize_example(rows[0], tok)
    assert sum(ex["loss_mask"]) > 0 and len(ex["input_ids"]) == len(ex["loss_mask"])


def test_humaneval_overlap_is_found_and_removed(tmp_path):
    problem = code_dataset.humaneval_problems()[0]  # has_close_elements, with a docstring
    root = tmp_path / "lib"
    root.mkdir()
    (root / "leaky.py").write_text(problem["prompt"] + problem["canonical_solution"])
    (root / "clean.py").write_text(textwrap.dedent('''
        def area(width, height):
            """Return the area of a width x height rectangle, both in metres, as a float."""
            return float(width) * float(height)
        '''))
    out = tmp_path / "code.jsonl"
    report = code_dataset.build(str(out), root=str(root))
    assert report["humaneval_overlap"] == 1
    assert report["humaneval_tasks_overlapping"] == [problem["task_id"]]
    names = [json.loads(line)["messages"][0]["content"] for line in out.read_text().splitlines()]
    assert len(names) == 1 and "`area`" in names[0]
    saved = json.loads((tmp_path / "code.jsonl.report.json").read_text())
    assert saved["humaneval_overlap_examples"][0]["task_id"] == problem["task_id"]
