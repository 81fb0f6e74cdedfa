import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
REAL_TOKENIZER = ROOT.parent / "shared" / "llama2-tokenizer" / "tokenizer.model"

# Tests are small; two threads is what CI has and keeps timings comparable.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def real_tokenizer_path() -> Path:
    """Meta's Llama 2 tokenizer, present on the project's machines only (never committed)."""
    if not REAL_TOKENIZER.exists():
        pytest.skip(f"the real Llama 2 tokenizer is not at {REAL_TOKENIZER}")
    return REAL_TOKENIZER


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine two
    threads per process contend badly (seen: 20x slower). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ByteTokenizer:
    """Bytes as ids (offset 3), BOS 1, EOS 2: enough for the chat format in a test."""
    bos_id, eos_id = 1, 2

    def encode(self, s, bos, eos):
        return [1] * bos + [b + 3 for b in s.encode()] + [2] * eos

    def decode(self, ids):
        return bytes(i - 3 for i in ids if i > 2).decode()


def tiny_model(seed: int = 0, preset: str = "tiny-gqa"):
    """A seeded random model of a tiny preset, in eval mode."""
    import llama2_edu as L

    torch.manual_seed(seed)
    return L.Transformer(L.ModelArgs.preset(preset)).eval()


def stub(*args, **kwargs):
    """An exercise as the student edition hands it out: not written yet."""
    raise NotImplementedError("exercise: write this part")


def fails_with(check, fn, hint: str) -> None:
    """`check(fn)` must reject `fn` with a message matching `hint`."""
    from llama2_edu.exercises._harness import ExerciseFailed

    with pytest.raises(ExerciseFailed, match=hint):
        check(fn)
