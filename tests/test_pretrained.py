"""The toy base model recipe, run at a tiny size: trains, caches, reloads, re-keys on change.
(The full-size run is exercised by notebooks/07_pretraining.ipynb.)"""

import copy

import pytest
import torch

import llama2_edu as L
from llama2_edu import pretrained as P
from llama2_edu.data import EXTRA_TOKENIZER_TEXT


def tiny_recipe(**train_overrides) -> dict:
    r = copy.deepcopy(P.TOY_RECIPE)
    r["corpus"].update(n_train_docs=600, n_val_docs=40)
    r["tokenizer"]["vocab_size"] = 400
    r["model"].update(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=400, multiple_of=16,
                      max_seq_len=64)
    r["data"].update(seq_len=32, batch_size=4)
    r["train"].update(max_steps=6, warmup_steps=2, eval_every=3, **train_overrides)
    return r


def test_recipe_is_gqa_and_matches_the_toy_preset():
    args = P.toy_model_args()
    assert args == L.ModelArgs.preset("toy")
    assert 1 < args.kv_heads < args.n_heads  # GQA on
    assert P.TOY_RECIPE["tokenizer"]["vocab_size"] == args.vocab_size


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMA2_EDU_CACHE", str(tmp_path / "c"))
    assert P.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LLAMA2_EDU_CACHE")
    assert P.default_cache_dir().parts[-2:] == (".cache", "llama2_edu")


def test_toy_base_model_trains_caches_and_reloads(tmp_path):
    recipe = tiny_recipe()
    model, tok = P.toy_base_model(cache_dir=tmp_path, recipe=recipe)
    assert tok.n_words == 400 and model.args.vocab_size == 400
    # Chat tags are single pieces (a deviation from Meta's tokenizer, documented in pretrained).
    for tag in ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"):
        assert tag in tok.pieces(f"a {tag} b")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and not any(f.endswith(".tmp") for f in files)
    history = P.toy_base_history(cache_dir=tmp_path, recipe=recipe)
    assert history["val_step"] == [3, 6] and history["val_loss"][-1] < history["val_loss"][0]

    again, _ = P.toy_base_model(cache_dir=tmp_path, recipe=recipe)  # loads, does not train
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    # Deterministic: retraining gives the same weights bitwise.
    retrained, _ = P.toy_base_model(cache_dir=tmp_path, recipe=recipe, retrain=True)
    assert torch.equal(retrained.output.weight, model.output.weight)

    # Any change of the recipe is a new cache entry, never a stale hit.
    changed = tiny_recipe(lr=1e-3)
    P.toy_base_model(cache_dir=tmp_path, recipe=changed)
    assert len(list(tmp_path.glob("toy_base-*.pt"))) == 2


def test_tokenizer_key_changes_with_the_corpus(tmp_path):
    a = P._tokenizer_key(tiny_recipe())
    r = tiny_recipe()
    r["corpus"]["seed"] = 1
    assert P._tokenizer_key(r) != a
    assert "Sorry, I can't help with that." in EXTRA_TOKENIZER_TEXT


def test_vocab_mismatch_is_reported(tmp_path):
    tok = P.toy_tokenizer(cache_dir=tmp_path, recipe=tiny_recipe())
    with pytest.raises(ValueError, match="vocab_size"):
        P.toy_model_args(tok)  # the full recipe's model expects 1024 pieces
