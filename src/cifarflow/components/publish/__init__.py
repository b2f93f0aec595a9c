"""Publish step: the winning model into the model store (see executor.py)."""
