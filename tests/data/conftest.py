"""Fixtures of the data tests: the packaged tokenizer loaded once per session (`tok`), and
`packaged_prepare`, which hands that same tokenizer to prepare and show instead of their loading it
again on every run (the same files: it only saves time)."""
import pytest

from r1jax.data import prepare, show
from r1jax.data import tokenizer as tokenizer_lib


@pytest.fixture(scope="session")
def tok():
    return tokenizer_lib.load_tokenizer()


@pytest.fixture
def packaged_prepare(tok, monkeypatch):
    monkeypatch.setattr(prepare, "load_tokenizer", lambda path=None: tok)
    monkeypatch.setattr(show, "load_tokenizer", lambda path=None: tok)
