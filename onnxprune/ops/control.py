"""Control flow: If, Loop, Scan. Their bodies are graphs of their own, which the analysis does not
enter, so they are registered with no rules at all: every channel they touch stays frozen (the
analysis also freezes what a body reads from outside, ``structure.scopes``), and the PyTorch
interpreter refuses them."""

from __future__ import annotations

from .registry import register

CONTROL_FLOW = ("If", "Loop", "Scan")

register(*CONTROL_FLOW)  # known, and deliberately without rules
