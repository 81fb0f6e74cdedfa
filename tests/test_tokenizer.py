"""The SentencePiece wrapper and Llama-style tokenizer training (llama2_edu.tokenizer)."""

import random

import pytest

from llama2_edu.tokenizer import LLAMA_TRAINER_OPTIONS, Tokenizer, train_tokenizer

NAMES = ["Tom", "Mia", "Sam", "Lily", "Ben"]
PLACES = ["park", "forest", "school", "river", "garden"]


def corpus(seed: int = 0, n: int = 300) -> list[str]:
    """A small corpus with many multi-digit numbers, so BPE *would* merge digits if allowed."""
    r = random.Random(seed)
    return [f"{r.choice(NAMES)} went to the {r.choice(PLACES)} and found "
            f"{r.randint(10, 9999)} shiny stones. Café time!" for _ in range(n)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return train_tokenizer(corpus(), 320, tmp_path_factory.mktemp("tok") / "toy.model")


def test_round_trip(tok):
    for text in ["Mia went to the garden.", "Café  time!\n\tTwo  spaces and a tab.",
                 "  leading and trailing  ", "Sam found 4096 stones", ""]:
        ids = tok.encode(text, bos=False, eos=False)
        # identity normalisation, no whitespace squeezing: the exact text comes back
        assert tok.decode(ids) == text


def test_bos_eos_are_added_on_request_only(tok):
    plain = tok.encode("Tom", bos=False, eos=False)
    assert tok.encode("Tom", bos=True, eos=False) == [1] + plain
    assert tok.encode("Tom", bos=True, eos=True) == [1] + plain + [2]
    assert tok.encode("Tom", bos=False, eos=True) == plain + [2]
    assert 1 not in plain and 2 not in plain


def test_special_ids(tok):
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.sp.unk_id()) == (1, 2, -1, 0)
    assert tok.n_words == len(tok) == 320
    assert [tok.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]


def test_digits_are_one_token_each(tok):
    pieces = tok.pieces("found 2024 stones")
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["2", "0", "2", "4"]
    # No piece in the whole vocabulary mixes a digit with anything else.
    for i in range(tok.n_words):
        piece = tok.id_to_piece(i)
        if any(c.isdigit() for c in piece) and not tok.sp.is_byte(i):
            assert len(piece) == 1, piece


def test_digits_would_merge_without_split_digits(tmp_path):
    merged = train_tokenizer(corpus(), 320, tmp_path / "m.model", split_digits=False)
    assert any(sum(c.isdigit() for c in merged.id_to_piece(i)) > 1
               for i in range(merged.n_words)), "the corpus must be able to tell the option apart"


def test_unseen_character_survives_via_byte_fallback(tok):
    text = "Tom 🙂 ok"  # the emoji never occurs in the training corpus
    ids = tok.encode(text, bos=False, eos=False)
    assert tok.decode(ids) == text
    assert tok.sp.unk_id() not in ids
    byte_ids = [i for i in ids if tok.sp.is_byte(i)]
    assert [tok.id_to_piece(i) for i in byte_ids] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]


def test_without_byte_fallback_the_emoji_is_unknown(tmp_path):
    plain = train_tokenizer(corpus(), 64, tmp_path / "nb.model", byte_fallback=False)
    ids = plain.encode("🙂", bos=False, eos=False)
    assert 0 in ids and plain.decode(ids) != "🙂"


def test_missing_model_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "tokenizer.model"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Tokenizer(missing)


def test_encode_rejects_non_strings(tok):
    with pytest.raises(TypeError, match="list"):
        tok.encode(["Tom"], bos=False, eos=False)


def test_training_is_deterministic(tmp_path):
    a = train_tokenizer(corpus(seed=3), 300, tmp_path / "a.model")
    b = train_tokenizer(corpus(seed=3), 300, tmp_path / "b.model")
    assert a.path.read_bytes() == b.path.read_bytes()
    c = train_tokenizer(corpus(seed=4), 300, tmp_path / "c.model")
    assert c.path.read_bytes() != a.path.read_bytes()  # the check can fail


def test_training_writes_atomically_and_checks_the_vocab_size(tmp_path):
    train_tokenizer(corpus(), 300, tmp_path / "sub" / "t.model")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["t.model"]  # no temp left behind
    with pytest.raises(ValueError, match="259"):
        train_tokenizer(corpus(), 200, tmp_path / "small.model")


def test_llama_options():
    assert LLAMA_TRAINER_OPTIONS["model_type"] == "bpe"
    assert LLAMA_TRAINER_OPTIONS["split_digits"] and LLAMA_TRAINER_OPTIONS["byte_fallback"]
    assert LLAMA_TRAINER_OPTIONS["normalization_rule_name"] == "identity"


def test_real_llama2_tokenizer(real_tokenizer_path):
    tok = Tokenizer(real_tokenizer_path)
    assert tok.n_words == 32000
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.sp.unk_id()) == (1, 2, -1, 0)
    # the ids listed in ../shared/llama2-tokenizer/README.md
    assert tok.encode("Hello world", bos=False, eos=False) == [15043, 3186]
    assert tok.encode("1234", bos=False, eos=False) == [29871, 29896, 29906, 29941, 29946]
    assert tok.encode("[INST] hi [/INST]", bos=False, eos=False) == [
        518, 25580, 29962, 7251, 518, 29914, 25580, 29962]
    assert tok.encode("Hello world", bos=True, eos=True) == [1, 15043, 3186, 2]
    emoji = tok.encode("🙂", bos=False, eos=False)
    assert tok.decode(emoji) == "🙂" and any(tok.sp.is_byte(i) for i in emoji)
