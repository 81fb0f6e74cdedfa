"""Checks for chapter 06 (the tokenizer and the chat format).

    check_count_pairs(fn)   fn(ids) -> {(a, b): how often b directly follows a}
    check_bpe_merge(fn)     fn(ids, pair, new_id) -> ids with every occurrence of pair, left to
                            right and without overlaps, replaced by new_id
    check_chat_format(fn)   fn(tokenizer, dialog) -> token ids of a Llama 2 chat prompt, as Meta
                            builds them (llama2_edu.chat.encode_dialog)

Each check runs the learner's function on fixed and random inputs, compares with the reference,
and names the typical mistake when one matches.
"""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ..chat import B_INST, B_SYS, E_INST, E_SYS, encode_dialog
from ._harness import ExerciseFailed, call_learner, passed

__all__ = ["check_count_pairs", "check_bpe_merge", "check_chat_format"]


# ---- counting pairs --------------------------------------------------------------------------
def _count_pairs(ids: list[int]) -> dict[tuple[int, int], int]:
    return dict(Counter(zip(ids, ids[1:])))


def _count_pairs_hint(ids: list[int], got: dict) -> str | None:
    expected = _count_pairs(ids)
    if got == dict(Counter(zip(ids[:-1], ids[1:-1]))) and set(got) != set(expected):
        return "the last pair is missing: the pairs are (ids[i], ids[i + 1]) for i in " \
               "range(len(ids) - 1)"
    if set(got) == set(expected) and all(v == 1 for v in got.values()):
        return "every pair is counted once: count how *often* each pair occurs"
    if got == dict(Counter(zip(ids[::2], ids[1::2]))):
        return "only pairs at even positions are counted: pairs overlap, every position " \
               "starts one (ids[i], ids[i + 1])"
    if got == dict(Counter(zip(ids[1:], ids))):
        return "the pairs are reversed: the key is (left, right) = (ids[i], ids[i + 1])"
    if got == dict(Counter(zip(ids, ids[2:]))):
        return "the pairs skip a token: pair each id with the one right after it"
    return None


def check_count_pairs(fn: Callable) -> bool:
    """`fn(ids: list[int])` must return a dict mapping each adjacent pair (ids[i], ids[i+1]) to
    the number of times it occurs (overlapping occurrences count: [7, 7, 7] has (7, 7) twice)."""
    exercise = "check_count_pairs"
    rng = random.Random(6)
    # the first case tells "each pair counted once" from "last pair missing"
    cases = [[1, 2, 1, 2, 3], [7, 7, 7], [5], [], [3, 4, 3, 4, 3, 4, 3]]
    cases += [[rng.randrange(5) for _ in range(rng.randrange(2, 40))] for _ in range(20)]
    for ids in cases:
        got = call_learner(fn, list(ids), exercise=exercise)
        if not isinstance(got, dict):
            raise ExerciseFailed(f"{exercise}: expected a dict {{(a, b): count}}, got "
                                 f"{type(got).__name__}")
        got = {k: v for k, v in got.items() if v != 0}  # a zero count is harmless
        expected = _count_pairs(ids)
        if got != expected:
            hint = _count_pairs_hint(ids, got)
            shown = dict(sorted(expected.items())[:6])
            raise ExerciseFailed(f"{exercise}: for ids={ids[:12]}{'...' if len(ids) > 12 else ''}"
                                 f" expected {shown}{' ...' if len(expected) > 6 else ''}, got "
                                 f"{dict(sorted(got.items())[:6])}"
                                 + (f". Hint: {hint}" if hint else ""))
    return passed(exercise, f"{len(cases)} sequences")


# ---- one merge -------------------------------------------------------------------------------
def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


def _merge_overlapping(ids, pair, new_id):
    # Replaces each position that starts the pair but keeps walking one step at a time, so
    # [7, 7, 7] with (7, 7) turns into two new tokens from three.
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
        elif not (i > 0 and (ids[i - 1], ids[i]) == pair):
            out.append(ids[i])
    return out


def _merge_drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_right_to_left(ids, pair, new_id):
    return _merge(ids[::-1], pair[::-1], new_id)[::-1]


def _merge_hint(ids, pair, new_id, got) -> str | None:
    variants = [
        (_merge_first_only(ids, pair, new_id), "only the first occurrence is replaced: a merge "
                                               "replaces every occurrence of the pair"),
        (_merge_overlapping(ids, pair, new_id),
         "overlapping occurrences are both replaced: after a merge, skip both tokens of the "
         "pair (i += 2), so [7, 7, 7] with pair (7, 7) becomes [new, 7]"),
        (_merge_drops_last(ids, pair, new_id),
         "the last token is lost when it does not start a pair: the loop must run to the end "
         "of the list and copy the final token"),
        (_merge_right_to_left(ids, pair, new_id),
         "the list is scanned right to left: merge from the left, as BPE does"),
        (ids, "nothing was replaced: look for ids[i] == pair[0] and ids[i + 1] == pair[1]"),
    ]
    for value, hint in variants:
        if got == value and value != _merge(ids, pair, new_id):
            return hint
    return None


def check_bpe_merge(fn: Callable) -> bool:
    """`fn(ids, pair, new_id)` must return a new list in which every occurrence of `pair`
    (scanning left to right, occurrences do not overlap) is replaced by `new_id`; the input
    list must be left unchanged."""
    exercise = "check_bpe_merge"
    rng = random.Random(7)
    cases = [([1, 2, 3, 1, 2], (1, 2), 9), ([7, 7, 7], (7, 7), 8), ([7, 7, 7, 7], (7, 7), 8),
             ([4, 5, 6], (5, 6), 10), ([1, 2, 3], (3, 1), 9), ([2], (2, 2), 5)]
    for _ in range(30):
        ids = [rng.randrange(4) for _ in range(rng.randrange(2, 30))]
        i = rng.randrange(len(ids) - 1)
        cases.append((ids, (ids[i], ids[i + 1]), 100 + rng.randrange(50)))
    for ids, pair, new_id in cases:
        given = list(ids)
        got = call_learner(fn, given, pair, new_id, exercise=exercise)
        if given != ids:
            raise ExerciseFailed(f"{exercise}: the input list was modified in place; build and "
                                 f"return a new list")
        if not isinstance(got, list):
            raise ExerciseFailed(f"{exercise}: expected a list of ids, got {type(got).__name__}")
        expected = _merge(ids, pair, new_id)
        if got != expected:
            hint = _merge_hint(ids, pair, new_id, got)
            raise ExerciseFailed(f"{exercise}: merging {pair} -> {new_id} in {ids}: expected "
                                 f"{expected}, got {got}" + (f". Hint: {hint}" if hint else ""))
    return passed(exercise, f"{len(cases)} merges, overlaps included")


# ---- the chat format -------------------------------------------------------------------------
_TOKENIZER = None


def _toy_tokenizer():
    """A tiny Llama-style tokenizer, trained once per process on a few chat-like lines."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from ..tokenizer import train_tokenizer

        rng = random.Random(0)
        people, things = ["Mia", "Tom", "Lily"], ["kite", "cat", "cake"]
        texts = [f"[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nWhere is the {rng.choice(things)} of "
                 f"{rng.choice(people)}? [/INST] It is in the garden. " for _ in range(100)]
        # SentencePiece reads the whole model at load time, so the file need not outlive it.
        with tempfile.TemporaryDirectory(prefix="llama2_edu_chat_") as folder:
            _TOKENIZER = train_tokenizer(texts, 300, Path(folder) / "chat.model")
    return _TOKENIZER


def _chat_variants(tok, dialog) -> list[tuple[list[int], str]]:
    """Token ids of the usual wrong ways to build the prompt, each with its hint."""
    system = dialog[0]["content"] if dialog[0]["role"] == "system" else None
    rest = dialog[1:] if system is not None else list(dialog)
    pairs = list(zip(rest[::2], rest[1::2]))

    def build(*, fold=True, sys_tags=(B_SYS, E_SYS), strip=True, trailing=" ", bos_each=True,
              eos=True, sys_every_turn=False):
        ids: list[int] = []
        texts = [m["content"] for m in rest]
        s = (lambda t: t.strip()) if strip else (lambda t: t)
        users = texts[::2]
        if system is not None and fold:
            users = [sys_tags[0] + system + sys_tags[1] + u if (i == 0 or sys_every_turn) else u
                     for i, u in enumerate(users)]
        for i, (_, a) in enumerate(pairs):
            text = f"{B_INST} {s(users[i])} {E_INST} {s(a['content'])}{trailing}"
            ids += tok.encode(text, bos=bos_each or i == 0, eos=eos)
        ids += tok.encode(f"{B_INST} {s(users[-1])} {E_INST}", bos=bos_each or not pairs,
                          eos=False)
        return ids

    return [
        (build(fold=False), "the system message is missing: fold it into the first user "
                            "message as B_SYS + system + E_SYS + user"),
        (build(sys_tags=("<<SYS>>", "<</SYS>>")),
         "the system tags lack their newlines: B_SYS is '<<SYS>>\\n' and E_SYS is "
         "'\\n<</SYS>>\\n\\n'"),
        (build(sys_every_turn=True), "the system message goes into the first user turn only"),
        (build(strip=False), "the contents are not stripped: Meta writes "
                             "f'[INST] {user.strip()} [/INST] {answer.strip()} '"),
        (build(trailing=""), "the space after each answer is missing: a completed turn is "
                             "f'[INST] {user} [/INST] {answer} ' (note the final space)"),
        (build(bos_each=False), "BOS is added once only: every turn starts with its own BOS"),
        (build(eos=False), "the completed turns lack EOS: each (user, answer) pair is encoded "
                           "with bos=True, eos=True"),
    ]


def check_chat_format(fn: Callable) -> bool:
    """`fn(tokenizer, dialog)` must return the token ids of a dialog (optional system message,
    then user/assistant alternating, ending with user) exactly as Meta's chat_completion builds
    them; `tokenizer.encode(text, bos, eos)` is the only tokenizer call needed."""
    exercise = "check_chat_format"
    tok = _toy_tokenizer()
    U = lambda t: {"role": "user", "content": t}  # noqa: E731
    A = lambda t: {"role": "assistant", "content": t}  # noqa: E731
    S = lambda t: {"role": "system", "content": t}  # noqa: E731
    dialogs = [
        [U("Where is the kite of Mia?")],
        [S("Be kind."), U("Where is the cat of Tom?")],
        [U("Where is the cake?"), A("It is in the garden."), U("And the kite?")],
        [S(" Be kind. "), U(" Where is the kite of Lily? "), A(" In the garden. "),
         U("Thanks"), A("You are welcome."), U(" Bye ")],
    ]
    for dialog in dialogs:
        got = call_learner(fn, tok, [dict(m) for m in dialog], exercise=exercise)
        expected = encode_dialog(tok, dialog)
        if not isinstance(got, list):
            raise ExerciseFailed(f"{exercise}: expected a list of token ids, got "
                                 f"{type(got).__name__}")
        if got != expected:
            hint = next((h for ids, h in _chat_variants(tok, dialog)
                         if got == ids and ids != expected), None)
            if hint is None and got[-1:] == [tok.eos_id]:
                hint = "the last user turn must end without EOS: the model answers after it"
            raise ExerciseFailed(
                f"{exercise}: for the dialog {[m['role'] for m in dialog]} the ids differ.\n"
                f"  expected text {tok.decode(expected)!r} ({len(expected)} ids, "
                f"{expected.count(tok.bos_id)} BOS, {expected.count(tok.eos_id)} EOS)\n"
                f"  got text      {tok.decode(got)!r} ({len(got)} ids, "
                f"{got.count(tok.bos_id)} BOS, {got.count(tok.eos_id)} EOS)"
                + (f"\n  Hint: {hint}" if hint else ""))
    return passed(exercise, f"{len(dialogs)} dialogs, system prompt and multi-turn")
