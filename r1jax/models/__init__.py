"""Model families (deepseek_v3/, ...) over shared building blocks (common/), found by model_type in
registry.py; the model checkpoint format (checkpoint.py), the --checkpoint resolver (sources.py) and
the next-token losses training and evaluation share (losses.py)."""
