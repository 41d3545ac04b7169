"""Data: the R1 tokenizer, row formats, the R1 chat format, dataset preparation and loading."""
from r1jax.data.chat import tokenize_example
from r1jax.data.formats import DataError, Example, parse_row, read_examples
from r1jax.data.scoring import read_scoring_rows
from r1jax.data.tokenizer import encode, load_tokenizer

__all__ = ["DataError", "Example", "encode", "load_tokenizer", "parse_row", "read_examples",
           "read_scoring_rows", "tokenize_example"]
