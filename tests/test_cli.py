"""`python -m llama2_edu generate|chat` in a subprocess, on tiny Meta and HF folders written here
with a tokenizer trained here: the CLI prints what the library generates."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_reference import random_model

import llama2_edu as L
from llama2_edu import checkpoint_io as C
from llama2_edu.chat import encode_dialog
from llama2_edu.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
LINES = [
    "Once upon a time a small robot lived in a quiet town by the sea.",
    "Every morning the robot walked to the harbour to count the boats.",
    "One day a storm came, and the boats did not come home.",
    "The robot climbed the lighthouse and turned on the great lamp.",
    "The sailors saw the light and found their way back to the town.",
] * 4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = train_tokenizer(LINES, 300, root / "tok" / "tokenizer.model")
    model = random_model(seed=3, vocab_size=tok.n_words, n_kv_heads=2, max_seq_len=4096)
    C.save_meta(model, root / "meta", n_shards=2, tokenizer_path=tok.path)
    C.save_hf(model, root / "hf", tokenizer_path=tok.path)
    C.save_hf(model, root / "bare")  # no tokenizer.model
    return root, model, tok


def _run(*args, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llama2_edu", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def _greedy_text(model, tok, ids, n):
    out = L.generate(model, [ids], n, temperature=0.0, eos_id=tok.eos_id)[0]
    return tok.decode(out)


def test_generate_meta_and_hf_print_the_library_output(folders):
    root, model, tok = folders
    prompt = "Once upon a time"
    ids = tok.encode(prompt, bos=True, eos=False)
    new = L.generate(model, [ids], 12, temperature=0.0, eos_id=tok.eos_id)[0]
    expected = tok.decode(ids + new)  # one decode: the space before the first new word stays
    assert expected.startswith(prompt)
    for fmt in ("meta", "hf"):
        result = _run("generate", "--ckpt", str(root / fmt), "--prompt", prompt,
                      "--max-gen-len", "12", "--temperature", "0", "--device", "cpu")
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected + "\n"
        assert "[loaded" in result.stderr


def test_sampling_is_seeded(folders):
    root, model, tok = folders
    prompt = "The robot"
    result = _run("generate", "--ckpt", str(root / "hf"), "--prompt", prompt, "--max-gen-len",
                  "10", "--temperature", "1.0", "--top-p", "0.95", "--seed", "7")
    assert result.returncode == 0, result.stderr
    out = L.generate(model, [tok.encode(prompt, bos=True, eos=False)], 10, temperature=1.0,
                     top_p=0.95, eos_id=tok.eos_id, generator=torch.Generator().manual_seed(7))
    ids = tok.encode(prompt, bos=True, eos=False)
    assert result.stdout == tok.decode(ids + out[0]) + "\n"


def test_chat_reads_turns_from_stdin_in_llama2_format(folders):
    root, model, tok = folders
    system, turns = "Be brief.", ["Hello there", "Tell me about the storm"]
    result = _run("chat", "--ckpt", str(root / "meta"), "--system", system, "--max-gen-len",
                  "8", "--temperature", "0", "--device", "cpu",
                  "--tokenizer", str(root / "tok" / "tokenizer.model"),
                  stdin="\n".join(turns) + "\n")
    assert result.returncode == 0, result.stderr
    replies = [line.removeprefix("assistant> ") for line in result.stdout.splitlines()]
    assert len(replies) == 2
    dialog = [{"role": "system", "content": system}]
    for turn, reply in zip(turns, replies):
        dialog.append({"role": "user", "content": turn})
        expected = _greedy_text(model, tok, encode_dialog(tok, dialog), 8)
        assert reply == expected
        dialog.append({"role": "assistant", "content": expected})


def test_missing_tokenizer_and_bad_folder_are_clear_errors(folders, tmp_path, capsys):
    from llama2_edu.__main__ import main

    root, _, _ = folders
    assert main(["generate", "--ckpt", str(root / "bare"), "--prompt", "Hi"]) == 2
    err = capsys.readouterr().err
    assert "error: no tokenizer at" in err and "--tokenizer" in err
    assert main(["chat", "--ckpt", str(tmp_path),
                 "--tokenizer", str(root / "tok" / "tokenizer.model")]) == 2
    assert "neither a Meta checkpoint" in capsys.readouterr().err


def test_text_stream_holds_back_partial_characters(folders):
    from llama2_edu.__main__ import TextStream

    _, _, tok = folders
    ids = tok.encode("the boats é", bos=False, eos=False)  # é falls back to two byte tokens
    pieces = []
    stream = TextStream(tok, write=pieces.append)
    for token in ids:
        stream(0, token)
    assert "".join(pieces) == tok.decode(ids) == "the boats é"
    assert not any("\ufffd" in p for p in pieces)
    # after a prefix, the space that starts the next word is printed
    prefix = tok.encode("the robot", bos=True, eos=False)
    pieces.clear()
    stream = TextStream(tok, write=pieces.append, prefix=prefix)
    full = tok.encode("the robot walked", bos=True, eos=False)
    assert full[:len(prefix)] == prefix
    for token in full[len(prefix):]:
        stream(0, token)
    assert "".join(pieces) == " walked"
