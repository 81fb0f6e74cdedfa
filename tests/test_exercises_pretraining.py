"""The exercise checks of chapter 07: they pass on the reference and name typical mistakes."""

import math

import pytest
import torch
from conftest import stub

from llama2_edu.data import IGNORE_INDEX, pack
from llama2_edu.exercises import check_decay_groups, check_lr_schedule, check_pack_documents
from llama2_edu.exercises._harness import ExerciseFailed
from llama2_edu.train import TrainConfig, lr_at, param_groups


def schedule(step, max_steps, warmup, peak, *, start0=False, floor=0.1, linear=False,
             from_zero=False):
    if step < warmup:
        return peak * (step if start0 else step + 1) / warmup
    progress = min(1.0, (step if from_zero else step - warmup) / (max_steps - (0 if from_zero
                                                                              else warmup)))
    shape = (1 - progress) if linear else 0.5 * (1 + math.cos(math.pi * progress))
    return floor * peak + (peak - floor * peak) * shape


def test_lr_schedule_passes_on_reference():
    assert check_lr_schedule(schedule)
    assert check_lr_schedule(lambda s, m, w, p: lr_at(s, TrainConfig(max_steps=m, warmup_steps=w,
                                                                      lr=p)))


@pytest.mark.parametrize("mistake, hint", [
    (dict(start0=True), "starts at 0"),
    (dict(floor=0.0), "10% of the peak"),
    (dict(linear=True), "half a cosine"),
    (dict(from_zero=True), "starts after the warmup"),
])
def test_lr_schedule_names_the_mistake(mistake, hint):
    with pytest.raises(ExerciseFailed) as info:
        check_lr_schedule(lambda s, m, w, p: schedule(s, m, w, p, **mistake))
    assert hint in str(info.value)


def test_lr_schedule_stub_fails():
    with pytest.raises(ExerciseFailed, match="not implemented"):
        check_lr_schedule(stub)


def my_pack(docs, seq_len, *, overlap=True, drop_last=False, pad_target=IGNORE_INDEX,
            shift=True):
    stream = torch.tensor([t for d in docs for t in d])
    stride = seq_len if overlap else seq_len + 1
    inputs, targets = [], []
    for start in range(0, len(stream) - 1, stride):
        chunk = stream[start:start + seq_len + 1]
        if len(chunk) < seq_len + 1 and (drop_last or not overlap):
            break
        x = torch.zeros(seq_len, dtype=torch.long)
        y = torch.full((seq_len,), pad_target, dtype=torch.long)
        x[:len(chunk) - 1] = chunk[:-1]
        y[:len(chunk) - 1] = chunk[1:] if shift else chunk[:-1]
        inputs.append(x), targets.append(y)
    return torch.stack(inputs), torch.stack(targets)


def test_pack_passes_on_reference():
    assert check_pack_documents(my_pack)
    assert check_pack_documents(pack)


@pytest.mark.parametrize("mistake, hint", [
    (dict(overlap=False), "do not overlap"),
    (dict(drop_last=True), "partial row is dropped"),
    (dict(pad_target=0), "-100"),
    (dict(shift=False), "shifted left by one"),
])
def test_pack_names_the_mistake(mistake, hint):
    with pytest.raises(ExerciseFailed) as info:
        check_pack_documents(lambda d, t: my_pack(d, t, **mistake))
    assert hint in str(info.value)


def groups(model, *, decay_norms=False, skip_embeddings=False):
    decay, plain = [], []
    for name, p in model.named_parameters():
        is_matrix = p.dim() >= 2 and not (skip_embeddings and "embeddings" in name)
        (decay if is_matrix or decay_norms else plain).append(p)
    return decay, plain


def test_decay_groups_passes_on_reference():
    assert check_decay_groups(groups)
    assert check_decay_groups(lambda m: tuple(g["params"] for g in param_groups(m, 0.1)))


@pytest.mark.parametrize("mistake, hint", [
    (dict(decay_norms=True), "RMSNorm gains"),
    (dict(skip_embeddings=True), "embeddings are matrices too"),
])
def test_decay_groups_names_the_mistake(mistake, hint):
    with pytest.raises(ExerciseFailed) as info:
        check_decay_groups(lambda m: groups(m, **mistake))
    assert hint in str(info.value)
    with pytest.raises(ExerciseFailed, match="not implemented"):
        check_decay_groups(stub)
