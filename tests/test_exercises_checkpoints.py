"""The checks of chapter 09 pass on the reference and name the typical mistakes."""

import pytest
import torch
from conftest import fails_with, stub

from llama2_edu.checkpoint import meta_to_hf_name
from llama2_edu.checkpoint_io import merge_shards, shard_dim
from llama2_edu.exercises import check_hf_names, check_merge_shards


def test_stubs_fail_politely():
    for check in (check_merge_shards, check_hf_names):
        fails_with(check, stub, "not implemented yet")


def test_references_pass(capsys):
    assert check_merge_shards(merge_shards)
    assert check_hf_names(meta_to_hf_name)
    assert capsys.readouterr().out.count("✓") == 2


def _merge(shards, dims):
    out = {}
    for name in shards[0]:
        if name == "rope.freqs":
            continue
        dim = dims(name)
        out[name] = shards[0][name] if dim is None else torch.cat([s[name] for s in shards], dim)
    return out


@pytest.mark.parametrize("wrong, hint", [
    (lambda n: 0 if n == "tok_embeddings.weight" else shard_dim(n), "ParallelEmbedding"),
    (lambda n: 0 if n.endswith("attention.wo.weight") else shard_dim(n), "wo is RowParallel"),
    (lambda n: 0 if n.endswith("w2.weight") else shard_dim(n), "w2 is RowParallel"),
    (lambda n: 1 if n.endswith("wk.weight") else shard_dim(n), "ColumnParallel"),
    (lambda n: 0 if n.endswith("norm.weight") else shard_dim(n), "replicated"),
])
def test_merge_names_the_wrong_dim(wrong, hint):
    fails_with(check_merge_shards, lambda shards: _merge(shards, wrong), hint)


def test_merge_must_drop_rope_freqs():
    def keeps(shards):
        out = merge_shards(shards)
        out["rope.freqs"] = shards[0]["rope.freqs"]
        return out
    fails_with(check_merge_shards, keeps, "rope.freqs")


def test_hf_names_hints():
    fails_with(check_hf_names, lambda n: meta_to_hf_name(n).replace("gate_proj", "up_proj"),
               "w1 is the gate")
    fails_with(check_hf_names,
               lambda n: meta_to_hf_name(n).replace("post_attention_layernorm", "ffn_norm"),
               "post_attention_layernorm")
    fails_with(check_hf_names, lambda n: meta_to_hf_name(n).removeprefix("model."),
               "under 'model.'")
