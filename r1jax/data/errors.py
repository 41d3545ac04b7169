"""The error of unusable data: `DataError`, whose message starts with what it names.

A row's error starts with `PATH:LINE` (a JSONL line) or `PATH:row N` (a row of another container),
a file's with `PATH`, then ": " and what is wrong, on one line.
"""
from __future__ import annotations


class DataError(ValueError):
    """A data row or file that cannot be used; the message names `file:line` (or `file:row N`, or the
    file) and what is wrong."""
