"""The toy world corpus and batching: deterministic, split cleanly, packed without loss."""

import pytest
import torch

from llama2_edu.data import (IGNORE_INDEX, Batches, World, generate_documents, held_out_problems,
                             make_world, pack, problem_is_held_out, problem_text)
from llama2_edu.data.world import story_document


def test_world_is_deterministic_and_consistent():
    w = make_world(0)
    assert isinstance(w, World)
    assert w == make_world(0)
    assert w != make_world(1)
    for p in w.people:
        assert w.friend[w.friend[p]] == p and w.friend[p] != p
    questions = w.questions()
    assert len(questions) == 5 * len(w.people)
    assert {"question": "Where does Mia live?", "answer": w.lives_in["Mia"],
            "sentence": f"Mia lives in the {w.lives_in['Mia']}."} in questions


def test_documents_deterministic_for_a_seed_and_different_across_seeds():
    a = generate_documents(200, "train", seed=0)
    assert a == generate_documents(200, "train", seed=0)
    assert a != generate_documents(200, "train", seed=1)
    assert a[:50] == generate_documents(50, "train", seed=0)  # size only truncates
    kinds = {"story": 0, "arithmetic": 0, "facts": 0}
    for d in a:
        kind = ("arithmetic" if "=" in d and d[0].isdigit()
                else "story" if any(s in d for s in ("lived", "named", "called")) else "facts")
        kinds[kind] += 1
    assert all(n > 20 for n in kinds.values()), kinds


def test_stories_agree_with_the_world():
    import random
    w = make_world(0)
    rng = random.Random(0)
    for _ in range(50):
        story = story_document(w, rng)
        for p in w.people:
            if f"{p} lived in the " in story and story.startswith(("Once", p)):
                assert f"{p} lived in the {w.lives_in[p]}" in story


def test_held_out_split_is_disjoint():
    train = set(generate_documents(2000, "train", seed=0))
    val = generate_documents(300, "val", seed=0)
    assert not train & set(val)
    assert not train & set(generate_documents(300, "val", seed=5))
    # No held-out arithmetic problem is ever stated in training text.
    train_text = "\n".join(train)
    for a, op, b, r in held_out_problems(200):
        assert problem_is_held_out(a, op, b)
        assert f"\n{problem_text(a, op, b, r)}" not in "\n" + train_text


def test_bad_split_names_the_value():
    with pytest.raises(ValueError, match="split"):
        generate_documents(3, "test")


def test_pack_keeps_every_token_with_bos_and_eos():
    docs = [[1, 5, 6, 2], [1, 7, 12, 2], [1, 8, 9, 10, 11, 2]]
    stream = [t for d in docs for t in d]  # 14 tokens -> 13 targets -> 4 rows, 3 padded
    inputs, targets = pack(docs, seq_len=4)
    assert inputs.shape == targets.shape == (4, 4)
    kept = targets[targets != IGNORE_INDEX].tolist()
    assert kept == stream[1:]  # every token but the first is a target exactly once
    assert (targets == IGNORE_INDEX).sum() == 3
    assert inputs.flatten()[:len(stream) - 1].tolist() == stream[:-1]
    valid = targets[:, 1:] != IGNORE_INDEX
    assert torch.equal(inputs[:, 1:][valid], targets[:, :-1][valid])  # target = next input
    assert stream.count(1) == 3 and stream.count(2) == 3  # BOS and EOS survive packing
    assert kept.count(2) == 3


def test_pack_exact_fit_has_no_padding():
    docs = [[1, 3, 4, 2], [1, 5, 2]]  # 7 tokens -> 6 targets -> 2 rows of 3
    inputs, targets = pack(docs, seq_len=3)
    assert inputs.shape == (2, 3) and (targets != IGNORE_INDEX).all()
    assert inputs[1, 0] == targets[0, -1]  # rows overlap by one token


def test_batches_are_seeded_and_resumable():
    rows = torch.arange(50).repeat_interleave(3).view(50, 3)
    a = Batches(rows, rows + 1, batch_size=8, seed=3)
    first = [a.next_batch()[0][:, 0].tolist() for _ in range(4)]
    state = a.state_dict()
    rest = [a.next_batch()[0][:, 0].tolist() for _ in range(10)]  # crosses an epoch boundary
    b = Batches(rows, rows + 1, batch_size=8, seed=3)
    assert [b.next_batch()[0][:, 0].tolist() for _ in range(4)] == first
    c = Batches(rows, rows + 1, batch_size=8, seed=3)
    c.load_state_dict(state)
    assert [c.next_batch()[0][:, 0].tolist() for _ in range(10)] == rest
    # Each epoch is a permutation of all rows.
    d = Batches(rows, rows + 1, batch_size=10, seed=3)
    epoch = sorted(sum((d.next_batch()[0][:, 0].tolist() for _ in range(5)), []))
    assert epoch == list(range(50))
    assert Batches(rows, rows + 1, 8, seed=4).next_batch()[0][:, 0].tolist() != first[0]
    with pytest.raises(ValueError, match="rows"):
        Batches(rows[:10], rows[:10], 8, seed=3).load_state_dict(state)


def test_sequential_covers_rows_in_order_without_moving():
    rows = torch.arange(10).view(10, 1)
    b = Batches(rows, rows, batch_size=4, shuffle=False)
    assert [x[:, 0].tolist() for x, _ in b.sequential()] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert b.position == 0
    assert len(list(b.sequential(max_batches=2))) == 2


def test_both_splits_keep_the_same_mix_of_documents():
    def arithmetic_share(docs):
        return sum(d[0].isdigit() for d in docs) / len(docs)

    train, val = generate_documents(1000, "train"), generate_documents(1000, "val")
    assert abs(arithmetic_share(train) - 0.25) < 0.05
    assert abs(arithmetic_share(val) - 0.25) < 0.05
