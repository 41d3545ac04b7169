"""Inference: batched generation with a decode cache, and sampling."""
