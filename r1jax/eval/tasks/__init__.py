"""Task metrics on generated answers: the sandbox for untrusted code (sandbox.py, confine.py),
HumanEval (humaneval.py), reference-answer scoring (answers.py), the task runner (runner.py) and the
`evaluate --task` command line (cli.py)."""
