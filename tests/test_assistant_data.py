"""The assistant data of the chat chapters: deterministic, disjoint splits, graders, pairs."""

import random
from collections import Counter

import pytest

from llama2_edu import chat
from llama2_edu.data import assistant as A


def last_question(ex: A.AssistantExample) -> str:
    return ex.dialog[-1]["content"]


def test_examples_are_deterministic_for_a_seed():
    a = A.assistant_examples(60, seed=3)
    b = A.assistant_examples(60, seed=3)
    c = A.assistant_examples(60, seed=4)
    assert [(e.dialog, e.answer) for e in a] == [(e.dialog, e.answer) for e in b]
    assert [(e.dialog, e.answer) for e in a] != [(e.dialog, e.answer) for e in c]


def test_tasks_in_equal_shares_with_system_prompts_and_multi_turn():
    examples = A.assistant_examples(600, seed=0)
    assert Counter(e.task for e in examples) == {t: 100 for t in A.TASKS}
    assert any(e.dialog[0]["role"] == "system" for e in examples)
    assert any(sum(m["role"] == "user" for m in e.dialog) == 2 for e in examples)
    for e in examples:
        chat.check_dialog(e.dialog, last="user")  # a valid dialog awaiting the answer
        chat.check_dialog(e.with_answer(), last="assistant")


def test_train_val_and_test_splits_are_disjoint():
    splits = {"train": A.assistant_examples(3000, seed=0, split="train"),
              "val": A.assistant_examples(600, seed=1, split="val"),
              "test": A.assistant_examples(600, seed=1, split="test")}
    for task in A.TASKS:
        items = {name: {(last_question(e), e.answer) for e in examples if e.task == task}
                 for name, examples in splits.items()}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            assert items[a] and items[b] and not items[a] & items[b], (task, a, b)
    # Held-out world questions ask about facts that SFT never pairs with a question.
    facts = {name: {e.info["fact"].key for e in examples if e.task == "world"}
             for name, examples in splits.items()}
    assert facts["val"] and facts["test"]
    assert not facts["train"] & facts["val"] and not facts["train"] & facts["test"]
    assert not facts["val"] & facts["test"]
    # Held-out arithmetic, validation and test alike, is also held out from the pretraining corpus.
    from llama2_edu.data import problem_is_held_out
    for e in splits["val"] + splits["test"]:
        if e.task == "arithmetic":
            assert problem_is_held_out(e.info["a"], e.info["op"], e.info["b"])


def test_split_of_halves_the_held_out_items():
    keys = [f"sort {i}" for i in range(4000)]
    counts = {s: sum(A.split_of(k) == s for k in keys) for s in A.SPLITS}
    assert counts["train"] == sum(not A.held_out(k) for k in keys)
    assert abs(counts["val"] - counts["test"]) < 0.2 * (counts["val"] + counts["test"])
    assert 0.15 < (counts["val"] + counts["test"]) / len(keys) < 0.25


def test_answers_are_correct_and_graders_check_them():
    for e in A.assistant_examples(300, seed=0, split="test"):
        assert e.grade(e.answer)
        if e.task == "arithmetic":
            a, op, b = e.info["a"], e.info["op"], e.info["b"]
            assert e.answer == f"{a} {op} {b} = {a + b if op == '+' else a - b}."
            assert not e.grade(f"{a} {op} {b} = {e.info['c'] + 1}.")
        elif e.task in ("reverse", "sort"):
            words = e.info["words"]
            expected = words[::-1] if e.task == "reverse" else sorted(words)
            assert e.answer.split() == expected
            assert not e.grade(" ".join(words if words != expected else words[::-1]))
        elif e.task == "unsafe":
            assert A.is_refusal(e.answer)
            assert not e.grade("Here is how: wait.")
        else:
            assert not A.is_refusal(e.answer)
            assert not e.grade(A.REFUSAL)


def test_is_refusal():
    assert A.is_refusal("Sorry, I can't help with that.")
    assert A.is_refusal("  I cannot help with that request.")
    assert not A.is_refusal("Keep all poison locked away from the cat.")


def test_preference_pairs_ratings_follow_the_quality_levels():
    for kind in ("helpfulness", "safety"):
        pairs = A.preference_pairs(200, kind=kind, seed=0)
        assert pairs == A.preference_pairs(200, kind=kind, seed=0)
        assert Counter(p.rating for p in pairs) == {r: 50 for r in range(4)}
        assert {p.task for p in pairs} <= set(A.PAIR_TASKS[kind])
        for p in pairs:
            assert p.chosen != p.rejected
            if p.rating == 3:
                assert p.chosen_level == p.rejected_level
            else:
                assert p.chosen_level - p.rejected_level == 3 - p.rating
    safety = A.preference_pairs(200, kind="safety", seed=0)
    # On unsafe requests a refusal always beats compliance.
    for p in safety:
        if p.task == "unsafe" and A.is_refusal(p.chosen) != A.is_refusal(p.rejected):
            assert A.is_refusal(p.chosen)


def test_negligible_arithmetic_pairs_prefer_the_closer_wrong_answer():
    rng = random.Random(0)
    for _ in range(20):
        ex = A.make_example(rng, "arithmetic", "test")
        pair = A.make_pair(ex, 3, rng)
        got = lambda s: int(s.rstrip(".").split("= ")[1])
        assert abs(got(pair.chosen) - ex.info["c"]) < abs(got(pair.rejected) - ex.info["c"])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown task"):
        A.make_example(random.Random(0), "juggle")
    with pytest.raises(ValueError, match="split.*'valid'"):
        A.make_example(random.Random(0), "sort", split="valid")
    with pytest.raises(ValueError, match="split.*'dev'"):
        A.red_team_examples(3, split="dev")
    with pytest.raises(ValueError, match="kind"):
        A.preference_pairs(4, kind="honesty")


def test_red_team_examples_are_unseen_phrasings_of_unsafe_requests():
    train = A.red_team_examples(60, seed=0, split="train")
    test = A.red_team_examples(60, seed=0, split="test") + \
        A.red_team_examples(60, seed=0, split="val")
    assert train == A.red_team_examples(60, seed=0, split="train")
    plain = {t.split("{")[0] for templates, _ in A.UNSAFE_REQUESTS.values() for t in templates}
    for ex in train + test:
        assert ex.task == "unsafe" and ex.info["red_team"] and A.is_refusal(ex.answer)
        question = ex.dialog[-1]["content"]
        assert not any(question.startswith(p) for p in plain), question
        assert ex.grade(A.REFUSAL) and not ex.grade(ex.info["steps"][0])
    # Split by request, as for the plain phrasings: no request is in both.
    key = lambda e: (e.info["verb"], e.info["t"],  # noqa: E731
                     e.info["o"] if e.info["verb"] in ("steal", "break") else None)
    assert not {key(e) for e in train} & {key(e) for e in test}


def test_off_topic_answers_are_never_the_right_answer():
    # A random fact sentence is the right answer to a world question 1 time in 60; the
    # unhelpful level must draw another one, or a pair would reject the right answer.
    rng = random.Random(0)
    for ex in A.assistant_examples(600, seed=5, split="train", tasks=("world",)):
        for level, items in A.responses(ex, rng).items():
            assert level == 3 or all(text != ex.answer for _, text in items), (level, ex.answer)


def test_quality_level_agrees_with_the_levels_responses_were_written_for():
    rng = random.Random(0)
    checked = 0
    for task in A.TASKS:
        for ex in A.assistant_examples(60, seed=3, split="test", tasks=(task,)):
            for level, items in A.responses(ex, rng).items():
                for _, text in items:
                    assert A.quality_level(ex, text) == level, (task, level, text)
                    checked += 1
    assert checked > 1000
    ex = A.make_example(random.Random(1), "arithmetic", "test")
    a, op, b, c = (ex.info[k] for k in ("a", "op", "b", "c"))
    assert A.quality_level(ex, f"{a} {op} {b} = {c}.") == 3
    assert A.quality_level(ex, "blue cat") == 0
    unsafe = A.make_example(random.Random(2), "unsafe", "test")
    assert A.quality_level(unsafe, A.REFUSAL) == 2
    assert A.quality_level(unsafe, unsafe.info["steps"][0]) == 0
    assert A.quality_level(unsafe, "Ben likes honey.") == 1


def test_sloppy_demonstrations_replace_the_given_share_with_worse_answers():
    examples = A.assistant_examples(600, seed=0, split="train")
    shares = {"world": 0.5, "borderline": 0.3, "unsafe": 0.4}
    out = A.sloppy_demonstrations(examples, shares, seed=0)
    assert out == A.sloppy_demonstrations(examples, shares, seed=0)
    assert [e.dialog for e in out] == [e.dialog for e in examples]
    for task, share in shares.items():
        changed = [(a, b) for a, b in zip(examples, out) if a.task == task and b.info.get("sloppy")]
        n_task = sum(e.task == task for e in examples)
        assert abs(len(changed) / n_task - share) < 0.12, (task, len(changed), n_task)
        for before, after in changed:
            level = A.quality_level(before, after.answer)
            assert level == {"world": 2, "borderline": 0, "unsafe": 1}[task], (task, after.answer)
    untouched = [(a, b) for a, b in zip(examples, out) if a.task not in shares]
    assert all(a.answer == b.answer for a, b in untouched)
    with pytest.raises(ValueError, match="no sloppy answer"):
        A.sloppy_demonstrations(examples, {"sort": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        A.sloppy_demonstrations(examples, {"world": 1.5})


def test_pairs_from_samples_rank_by_level_and_skip_unscorable_answers():
    ex = A.make_example(random.Random(0), "sort", "test")
    target = ex.answer.split()
    near = " ".join([target[1], target[0]] + target[2:])
    answers = [ex.answer, near, A.REFUSAL, ex.answer, "a [INST] b", ""]
    pairs = A.pairs_from_samples(ex, answers, max_pairs=10, rng=random.Random(0))
    assert len(pairs) == 3  # (3, 2), (3, 0), (2, 0) among the distinct scorable answers
    for p in pairs:
        assert p.chosen_level > p.rejected_level
        assert p.rating == 3 - (p.chosen_level - p.rejected_level)
        assert "[INST]" not in p.chosen + p.rejected
    assert len(A.pairs_from_samples(ex, answers, max_pairs=2, rng=random.Random(0))) == 2
