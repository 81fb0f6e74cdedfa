"""The book's own data: a small fixed world written as stories, facts and arithmetic, and the
batching that turns text into training rows. Deterministic for a seed; nothing is downloaded."""

from .batching import IGNORE_INDEX, Batches, encode_documents, pack
from .world import (EXTRA_TOKENIZER_TEXT, World, generate_documents, held_out_problems,
                    make_world, problem_is_held_out, problem_text)

# Instruction data for the chat chapters lives in its own module (added by issue 6).
from . import assistant  # noqa: E402,F401  instructions, refusals, preference pairs

__all__ = [
    "IGNORE_INDEX", "Batches", "encode_documents", "pack",
    "EXTRA_TOKENIZER_TEXT", "World", "generate_documents", "held_out_problems", "make_world",
    "problem_is_held_out", "problem_text",
]
