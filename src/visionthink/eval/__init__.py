"""Evaluation: scoring answers, and running modes over a set of items."""
