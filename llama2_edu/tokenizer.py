"""SentencePiece tokenizer with Meta's API, and training a Llama-style BPE model of our own.

Llama 2's tokenizer is a SentencePiece BPE model of 32,000 pieces: digits are split one per
token, text is not normalised, and any character missing from the vocabulary falls back to
its UTF-8 bytes (<0x00>..<0xFF>), so no input is ever "unknown".
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

# Llama's trainer options (from the tokenizer.model's own trainer_spec, readable with
# sentencepiece's ModelProto). character_coverage is 0.99995 in Llama's; we use 1.0 so that a
# small corpus keeps every character it has.
LLAMA_TRAINER_OPTIONS = dict(
    model_type="bpe",
    split_digits=True,
    byte_fallback=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    allow_whitespace_only_pieces=True,
    character_coverage=1.0,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
)


class Tokenizer:
    """`encode(s, bos, eos)` / `decode(ids)` as in Meta's llama/tokenizer.py."""

    def __init__(self, model_path: str | os.PathLike):
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no tokenizer model at {path}; a Llama 2 download has it as tokenizer.model, "
                "or train one with llama2_edu.tokenizer.train_tokenizer")
        self.path = path
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.n_words: int = self.sp.vocab_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()  # -1: Llama has no padding token

    def encode(self, s: str, bos: bool, eos: bool) -> list[int]:
        if not isinstance(s, str):
            raise TypeError(f"encode takes a str, got {type(s).__name__}")
        ids = self.sp.encode(s)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode(list(ids))

    def id_to_piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(token_id)

    def pieces(self, s: str) -> list[str]:
        """The pieces `s` splits into, for showing how text is cut."""
        return self.sp.encode(s, out_type=str)

    def __len__(self) -> int:
        return self.n_words

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, n_words={self.n_words})"


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_path: str | os.PathLike,
                    **options) -> Tokenizer:
    """Train a Llama-style BPE model on `texts` (one sentence or line each) and write it to
    `model_path` atomically. Keyword options override LLAMA_TRAINER_OPTIONS."""
    opts = {**LLAMA_TRAINER_OPTIONS, **options}
    # unk, bos, eos and (with byte fallback) the 256 byte pieces come before any learned piece
    minimum = 3 + (256 if opts["byte_fallback"] else 0)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum}"
                         f"{' with byte fallback' if opts['byte_fallback'] else ''}, "
                         f"got {vocab_size}")
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buffer, vocab_size=vocab_size,
        num_threads=1,  # one thread: the same corpus always gives the same model
        minloglevel=2, **opts)
    path = Path(model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(buffer.getvalue())
    os.replace(tmp.name, path)
    return Tokenizer(path)
