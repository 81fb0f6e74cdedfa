"""Supervised fine-tuning: the loss mask, packing, the loss, a short run, evaluation."""

import pytest
import torch
import torch.nn.functional as F

import llama2_edu as L
from llama2_edu import sft
from llama2_edu.data import assistant as A
from llama2_edu.tokenizer import train_tokenizer

IGNORE = sft.IGNORE_INDEX


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A small Llama-style tokenizer with the chat tags as single pieces, trained here."""
    texts = [m["content"] for e in A.assistant_examples(300, seed=0) for m in e.with_answer()]
    return train_tokenizer(texts, 400, tmp_path_factory.mktemp("tok") / "t.model",
                           user_defined_symbols=["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"])


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    return L.Transformer(L.ModelArgs.preset("tiny-gqa", vocab_size=tok.n_words))


DIALOG = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 12 + 35?"},
    {"role": "assistant", "content": "12 + 35 = 47."},
    {"role": "user", "content": "Sort the words: owl cat"},
    {"role": "assistant", "content": "cat owl"},
]


def test_labels_are_ignored_exactly_on_prompt_system_and_padding(tok):
    ids, is_answer = sft.tokenize_dialog(tok, DIALOG)
    # Build the two turns by hand, as Meta's format has them.
    sys_prompt = f"[INST] <<SYS>>\n{DIALOG[0]['content']}\n<</SYS>>\n\n{DIALOG[1]['content']} [/INST]"
    turn1_prompt = tok.encode(sys_prompt, bos=True, eos=False)
    turn1 = tok.encode(f"{sys_prompt} 12 + 35 = 47. ", bos=True, eos=True)
    turn2_prompt = tok.encode("[INST] Sort the words: owl cat [/INST]", bos=True, eos=False)
    turn2 = tok.encode("[INST] Sort the words: owl cat [/INST] cat owl ", bos=True, eos=True)
    assert ids == turn1 + turn2
    expected_flags = ([False] * len(turn1_prompt) + [True] * (len(turn1) - len(turn1_prompt))
                      + [False] * len(turn2_prompt) + [True] * (len(turn2) - len(turn2_prompt)))
    assert is_answer == expected_flags

    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    inputs, labels, lengths = sft.pad_batch([(ids, is_answer),
                                             sft.tokenize_dialog(tok, short)], pad_id=0)
    n = len(ids) - 1
    assert inputs.shape == labels.shape == (2, n)
    assert lengths.tolist() == [n, len(sft.tokenize_dialog(tok, short)[0]) - 1]
    for t in range(n):
        if expected_flags[t + 1]:
            assert labels[0, t] == ids[t + 1]  # the next token, where it is an answer token
        else:
            assert labels[0, t] == IGNORE  # prompt, system prompt, BOS
    # The trained tokens are exactly the two answers and their EOS.
    trained = [int(x) for x in labels[0] if x != IGNORE]
    assert trained == turn1[len(turn1_prompt):] + turn2[len(turn2_prompt):]
    assert trained.count(tok.eos_id) == 2
    assert tok.decode(turn1[len(turn1_prompt):]).strip() == "12 + 35 = 47."
    # Padding: input pad_id, label ignored.
    m = int(lengths[1])
    assert (labels[1, m:] == IGNORE).all() and (inputs[1, m:] == 0).all()
    assert (labels[1, :m] != IGNORE).any()


def test_pack_keeps_every_token_and_masks_across_row_boundaries(tok):
    seqs = [sft.tokenize_dialog(tok, e.with_answer()) for e in A.assistant_examples(12, seed=1)]
    stream = [t for ids, _ in seqs for t in ids]
    flags = [f for _, fl in seqs for f in fl]
    inputs, labels = sft.pack(seqs, seq_len=16)
    n = len(stream) - 1
    flat_in, flat_lab = inputs.flatten().tolist(), labels.flatten().tolist()
    assert flat_in[:n] == stream[:-1]
    assert flat_lab[:n] == [t if f else IGNORE for t, f in zip(stream[1:], flags[1:])]
    assert all(x == IGNORE for x in flat_lab[n:])
    assert inputs.shape[0] == -(-n // 16)


def test_sft_loss_is_cross_entropy_on_answer_tokens_only(tok):
    model = tiny_model(tok)
    inputs, labels, _ = sft.pad_batch([sft.tokenize_dialog(tok, DIALOG)])
    logits = model(inputs)
    keep = labels[0] != IGNORE
    expected = F.cross_entropy(logits[0][keep], labels[0][keep])
    torch.testing.assert_close(sft.sft_loss(model, inputs, labels), expected)


def test_finetune_lowers_the_answer_loss(tok):
    seqs = [sft.tokenize_dialog(tok, e.with_answer())
            for e in A.assistant_examples(12, seed=0, tasks=("unsafe",))]
    inputs, labels = sft.pack(seqs, seq_len=64)
    model = tiny_model(tok)
    before = sft.sft_loss(model, inputs, labels).item()
    config = sft.SFTConfig(lr=1e-2, batch_size=2, seq_len=64, epochs=3, warmup_steps=2)
    history = sft.finetune(model, inputs, labels, config)
    assert len(history["loss"]) == config.train_config(inputs.shape[0]).max_steps
    assert sft.sft_loss(model, inputs, labels).item() < 0.6 * before


def test_evaluate_reports_task_accuracy_and_refusal_rates(tok, monkeypatch):
    examples = A.assistant_examples(12, seed=0, split="test")
    # A stand-in "model" that answers correctly except that it refuses borderline requests.
    answers = {repr(e.dialog): (A.REFUSAL if e.task == "borderline" else e.answer)
               for e in examples}
    monkeypatch.setattr(sft, "respond", lambda model, tok, dialogs, *a, **k:
                        [answers[repr(tuple(d))] for d in dialogs])
    metrics, _ = sft.evaluate(None, tok, examples)
    assert metrics["arithmetic"] == metrics["world"] == 1.0
    assert metrics["borderline"] == 0.0 and metrics["false_refusal_rate"] == 1.0
    assert metrics["refusal_rate"] == 1.0 and metrics["helpful_refusal_rate"] == 0.0


def test_respond_is_greedy_and_checks_length(tok):
    model = tiny_model(tok)
    dialogs = [e.dialog for e in A.assistant_examples(3, seed=0)]
    assert sft.respond(model, tok, dialogs, max_gen_len=5) == \
        sft.respond(model, tok, dialogs, max_gen_len=5)
    with pytest.raises(ValueError, match="max_seq_len"):
        sft.respond(model, tok, dialogs, max_gen_len=model.args.max_seq_len)


def test_sft_dialog_must_end_with_an_answer(tok):
    with pytest.raises(ValueError, match="assistant"):
        sft.tokenize_dialog(tok, DIALOG[:-1])


def test_exercise_checks_pass_the_reference_and_catch_mistakes():
    from llama2_edu.exercises import check_pack, check_sft_labels
    from llama2_edu.exercises._harness import ExerciseFailed

    assert check_sft_labels(lambda ids, flags: sft.shift_labels(ids, flags)[1])
    assert check_pack(sft.pack)
    with pytest.raises(ExerciseFailed, match="NEXT token"):
        check_sft_labels(lambda ids, flags: [t if f else IGNORE for t, f in
                                             zip(ids[:-1], flags[:-1])])
    with pytest.raises(ExerciseFailed, match="not implemented"):
        check_pack(lambda seqs, n: (_ for _ in ()).throw(NotImplementedError("exercise")))
