"""The exercise checks of chapters 06 (tokenizer, chat format) and 08 (generation): they pass on
the reference and fail, with the right hint, on the typical mistakes."""

from collections import Counter

import pytest
import torch
from conftest import stub

from llama2_edu.chat import B_INST, B_SYS, E_INST, E_SYS, encode_dialog
from llama2_edu.exercises import (
    check_bpe_merge,
    check_chat_format,
    check_count_pairs,
    check_sample_next,
    check_top_p,
)
from llama2_edu.exercises._harness import ExerciseFailed
from llama2_edu.generation import sample_next, top_p_filter


@pytest.mark.parametrize("check", [check_count_pairs, check_bpe_merge, check_chat_format,
                                   check_top_p, check_sample_next])
def test_student_stub_fails(check):
    with pytest.raises(ExerciseFailed, match="not implemented"):
        check(stub)


# ---- count pairs --------------------------------------------------------------------------
def test_count_pairs_passes_on_reference(capsys):
    assert check_count_pairs(lambda ids: Counter(zip(ids, ids[1:])))
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("fn, hint", [
    (lambda ids: {p: 1 for p in zip(ids, ids[1:])}, "counted once"),
    (lambda ids: dict(Counter(zip(ids[:-1], ids[1:-1]))), "last pair is missing"),
    (lambda ids: dict(Counter(zip(ids[::2], ids[1::2]))), "even positions"),
    (lambda ids: dict(Counter(zip(ids[1:], ids))), "reversed"),
    (lambda ids: [(a, b) for a, b in zip(ids, ids[1:])], "expected a dict"),
])
def test_count_pairs_mistakes(fn, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check_count_pairs(fn)


# ---- one merge ----------------------------------------------------------------------------
def merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_overlapping(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 1
            if not (i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair):
                i += 1
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


def merge_in_place(ids, pair, new_id):
    ids[:] = merge(ids, pair, new_id)
    return ids


def merge_drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def test_bpe_merge_passes_on_reference():
    assert check_bpe_merge(merge)


@pytest.mark.parametrize("fn, hint", [
    (merge_overlapping, "overlapping"),
    (merge_first_only, "only the first occurrence"),
    (merge_in_place, "modified in place"),
    (merge_drops_last, "last token is lost"),
    (lambda ids, pair, new_id: list(ids), "nothing was replaced"),
])
def test_bpe_merge_mistakes(fn, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check_bpe_merge(fn)


# ---- chat format --------------------------------------------------------------------------
def chat(tok, dialog, *, fold=True, sys_tags=(B_SYS, E_SYS), strip=True, trailing=" ",
         bos_each=True, eos=True):
    if dialog[0]["role"] == "system" and fold:
        dialog = [{"role": "user", "content": sys_tags[0] + dialog[0]["content"] + sys_tags[1]
                   + dialog[1]["content"]}] + dialog[2:]
    elif dialog[0]["role"] == "system":
        dialog = dialog[1:]
    s = (lambda t: t.strip()) if strip else (lambda t: t)
    ids = []
    for i, (u, a) in enumerate(zip(dialog[::2], dialog[1::2])):
        ids += tok.encode(f"{B_INST} {s(u['content'])} {E_INST} {s(a['content'])}{trailing}",
                          bos=bos_each or i == 0, eos=eos)
    ids += tok.encode(f"{B_INST} {s(dialog[-1]['content'])} {E_INST}",
                      bos=bos_each or len(dialog) == 1, eos=False)
    return ids


def test_chat_format_passes_on_reference_and_own_build():
    assert check_chat_format(encode_dialog)
    assert check_chat_format(chat)


@pytest.mark.parametrize("options, hint", [
    (dict(fold=False), "system message is missing"),
    (dict(sys_tags=("<<SYS>>", "<</SYS>>")), "newlines"),
    (dict(strip=False), "not stripped"),
    (dict(trailing=""), "space after each answer"),
    (dict(bos_each=False), "BOS is added once"),
    (dict(eos=False), "lack EOS"),
])
def test_chat_format_mistakes(options, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check_chat_format(lambda tok, dialog: chat(tok, dialog, **options))


# ---- top-p --------------------------------------------------------------------------------
def top_p(probs, p, *, crossing=True, renormalise=True, sort=True, scatter=True):
    if sort:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    else:
        sorted_probs, order = probs, torch.arange(probs.shape[-1]).expand_as(probs)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    drop = (cumulative - sorted_probs > p) if crossing else (cumulative > p)
    kept = sorted_probs.masked_fill(drop, 0.0)
    out = torch.zeros_like(probs).scatter(-1, order, kept) if scatter else kept
    return out / out.sum(-1, keepdim=True) if renormalise else out


def test_top_p_passes_on_reference():
    assert check_top_p(top_p_filter)
    assert check_top_p(top_p)


@pytest.mark.parametrize("options, hint", [
    (dict(crossing=False), "crosses p is dropped"),
    (dict(renormalise=False), "not renormalised"),
    (dict(sort=False), "not sorted"),
    (dict(scatter=False), "sorted order"),
])
def test_top_p_mistakes(options, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check_top_p(lambda probs, p: top_p(probs, p, **options))


# ---- sampling -----------------------------------------------------------------------------
def sample(logits, temperature, top_p, generator, *, use_t=True, greedy=True, nucleus=True,
           multiply=False, seeded=True):
    if temperature == 0 and greedy:
        return logits.argmax(-1)
    t = temperature if use_t else 1.0
    probs = torch.softmax(logits * t if multiply else logits / t, -1)
    if nucleus and top_p < 1:
        probs = top_p_filter(probs, top_p)
    return torch.multinomial(probs, 1, generator=generator if seeded else None).squeeze(-1)


def test_sample_next_passes_on_reference():
    assert check_sample_next(sample_next)
    assert check_sample_next(sample)


@pytest.mark.parametrize("options, hint", [
    (dict(greedy=False), "temperature 0 must be greedy"),
    (dict(use_t=False), "temperature is ignored"),
    (dict(multiply=True), "multiplied by the temperature"),
    (dict(nucleus=False), "top_p is ignored"),
    (dict(seeded=False), "pass `generator`"),
])
def test_sample_next_mistakes(options, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        check_sample_next(lambda *args: sample(*args, **options))
