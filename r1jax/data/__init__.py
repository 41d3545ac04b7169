"""Data: the DeepSeek-V3/R1 tokenizer and dataset readers."""
from r1jax.data.scoring import DataError, read_scoring_rows
from r1jax.data.tokenizer import encode, load_tokenizer

__all__ = ["DataError", "encode", "load_tokenizer", "read_scoring_rows"]
