"""The pretraining loop: schedule, weight-decay groups, masks, accumulation, atomic checkpoints
and exact resume."""

import math
import os

import pytest
import torch

import llama2_edu as L
from llama2_edu.data import IGNORE_INDEX, Batches
from llama2_edu.train import (CHECKPOINT_NAME, TrainConfig, atomic_save, evaluate,
                              load_checkpoint, loss_fn, lr_at, param_groups, train)

ARGS = L.ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16,
                   max_seq_len=32)


def tiny_model(seed: int = 0) -> L.Transformer:
    torch.manual_seed(seed)
    return L.Transformer(ARGS)


def tiny_data(seed: int = 0, rows: int = 24, seq_len: int = 16) -> Batches:
    g = torch.Generator().manual_seed(123)
    stream = torch.randint(3, ARGS.vocab_size, (rows, seq_len + 1), generator=g)
    return Batches(stream[:, :-1], stream[:, 1:], batch_size=4, seed=seed)


def test_schedule_warmup_peak_and_cosine_floor():
    c = TrainConfig(max_steps=100, lr=1e-3, warmup_steps=10)
    assert lr_at(0, c) == pytest.approx(1e-4)  # linear warmup starts above zero
    assert lr_at(4, c) == pytest.approx(5e-4)
    assert lr_at(9, c) == pytest.approx(1e-3)  # warmup ends at the peak
    assert lr_at(10, c) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(55, c) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half way down the cosine
    assert lr_at(100, c) == pytest.approx(1e-4)  # ends at 10% of the peak
    assert lr_at(500, c) == pytest.approx(1e-4)
    lrs = [lr_at(s, c) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay
    assert lr_at(0, TrainConfig(max_steps=5, warmup_steps=0, lr=1.0)) == 1.0


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(max_steps=5, warmup_steps=6)
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=0)


def test_weight_decay_on_matrices_only():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert plain == {n for n in names.values() if "norm" in n}  # every RMSNorm gain, only them
    assert "tok_embeddings.weight" in decayed and "output.weight" in decayed
    assert "layers.0.attention.wq.weight" in decayed
    assert len(decayed) + len(plain) == len(list(model.parameters()))
    opt = L.train.make_optimizer(model, TrainConfig())
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-5


def test_loss_ignores_masked_targets():
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    masked = targets.clone()
    masked[:, :2] = IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[:, 2:].reshape(-1, 11),
                                                 targets[:, 2:].reshape(-1))
    torch.testing.assert_close(loss_fn(logits, masked), expected)


def test_training_reduces_loss_and_evaluates():
    model, data = tiny_model(), tiny_data()
    # Learnable data: each row counts upwards, so the next token is predictable.
    rows = (torch.arange(17)[None, :] + torch.arange(24)[:, None]) % 60 + 3
    data = Batches(rows[:, :-1], rows[:, 1:], batch_size=4)
    before = evaluate(model, data)
    hist = train(model, data, data, TrainConfig(max_steps=30, lr=1e-2, warmup_steps=3,
                                                eval_every=10))
    assert hist["val_step"] == [10, 20, 30]
    assert hist["val_loss"][-1] < before - 1.0
    assert hist["tokens"][-1] == 30 * 4 * 16
    assert len(hist["loss"]) == 30 and hist["lr"][2] == pytest.approx(1e-2)


def test_gradient_accumulation_matches_a_big_batch():
    rows = tiny_data()
    big = Batches(rows.inputs, rows.targets, batch_size=8, seed=0, shuffle=False)
    small = Batches(rows.inputs, rows.targets, batch_size=4, seed=0, shuffle=False)
    cfg = dict(max_steps=3, lr=1e-2, warmup_steps=0, eval_every=0)
    a, b = tiny_model(), tiny_model()
    ha = train(a, big, None, TrainConfig(**cfg))
    hb = train(b, small, None, TrainConfig(**cfg, grad_accum=2))
    torch.testing.assert_close(ha["loss"], hb["loss"], rtol=1e-5, atol=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)


def test_resume_reproduces_an_uninterrupted_run_bitwise(tmp_path):
    cfg = TrainConfig(max_steps=12, lr=5e-3, warmup_steps=3, eval_every=4, checkpoint_every=5)
    full = train(tiny_model(), tiny_data(), tiny_data(), cfg)

    # Interrupted after 7 steps: the last checkpoint is from step 5, so steps 6-7 are redone.
    train(tiny_model(), tiny_data(), tiny_data(), cfg, checkpoint_dir=tmp_path, stop_after=7)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 5
    # A fresh process would rebuild model and data from scratch; the checkpoint restores them.
    resumed = train(tiny_model(seed=99), tiny_data(), tiny_data(), cfg, checkpoint_dir=tmp_path)
    assert resumed["loss"] == full["loss"]  # bitwise
    assert resumed["val_loss"] == full["val_loss"]
    assert resumed["step"] == list(range(1, 13))
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 12
    with pytest.raises(ValueError, match="TrainConfig"):
        train(tiny_model(), tiny_data(), None, TrainConfig(max_steps=20, warmup_steps=1),
              checkpoint_dir=tmp_path)


def test_checkpoint_loads_with_weights_only_and_holds_the_state(tmp_path):
    cfg = TrainConfig(max_steps=2, warmup_steps=1, eval_every=0)
    model = tiny_model()
    train(model, tiny_data(), None, cfg, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert set(state) == {"model", "optimizer", "step", "rng", "data", "history", "config"}
    assert state["data"]["position"] == 8
    assert set(state["rng"]) >= {"torch", "python"}
    torch.testing.assert_close(state["model"]["output.weight"], model.output.weight)


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic_save({"x": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"x": torch.zeros(3)}, path)
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temporary file left behind
    torch.testing.assert_close(torch.load(path, weights_only=True)["x"], torch.ones(3))


def test_bf16_autocast_runs():
    hist = train(tiny_model(), tiny_data(), tiny_data(),
                 TrainConfig(max_steps=2, warmup_steps=1, bf16=True, eval_every=1))
    assert all(math.isfinite(v) for v in hist["loss"] + hist["val_loss"])
