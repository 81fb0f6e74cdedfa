"""Chapter 09: real checkpoints. Merging Meta's model-parallel shards, and the Hugging Face
parameter names."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..checkpoint import meta_to_hf_name
from ..checkpoint_io import _on_meta, merge_shards, split_shards
from ..config import ModelArgs
from ..model import Transformer
from ._harness import ExerciseFailed, call_learner, compare, passed


def _random_state_dict(args: ModelArgs, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    sd = Transformer(args).state_dict()
    with torch.no_grad():  # norms start at 1: randomise them so a mix-up shows
        for name, t in sd.items():
            if name.endswith("norm.weight"):
                t.uniform_(0.5, 1.5)
    return sd


_SHARD_HINTS = {
    "tok_embeddings.weight": "tok_embeddings is a ParallelEmbedding: each shard holds a slice "
                             "of the embedding *dim* (columns), so concatenate on dim 1",
    "attention.wo.weight": "wo is RowParallelLinear: each shard holds a slice of its input "
                           "columns, so concatenate on dim 1",
    "feed_forward.w2.weight": "w2 is RowParallelLinear: concatenate on dim 1",
    "norm.weight": "norm weights are replicated on every shard: take shard 0's copy, do not "
                   "concatenate",
}


def _hint_for(name: str) -> str:
    for key, hint in _SHARD_HINTS.items():
        if name.endswith(key):
            return hint
    return ("output, wq, wk, wv, w1 and w3 are ColumnParallelLinear: each shard holds a slice of "
            "the output rows, so concatenate on dim 0")


def check_merge_shards(fn: Callable[[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]]
                       ) -> bool:
    """`fn(shards)` merges Meta's model-parallel shards (a list of state dicts, in file order)
    into one state dict with the full weights, dropping the derived `rope.freqs`."""
    exercise = "merge Meta shards"
    args = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=96, multiple_of=16)
    for n_shards, seed in ((2, 0), (4, 1)):
        full = _random_state_dict(args, seed)
        shards = split_shards(full, n_shards, args)
        for shard in shards:
            shard["rope.freqs"] = torch.ones(args.head_dim // 2)
        got = call_learner(fn, [dict(s) for s in shards], exercise=exercise)
        if not isinstance(got, dict):
            raise ExerciseFailed(f"{exercise}: return a dict of name -> tensor, got "
                                 f"{type(got).__name__}")
        if "rope.freqs" in got:
            raise ExerciseFailed(f"{exercise}: drop 'rope.freqs': it is a derived buffer the "
                                 "model recomputes, not a weight")
        expected = merge_shards(shards)
        missing = sorted(set(expected) - set(got))
        if missing:
            raise ExerciseFailed(f"{exercise}: missing {missing[:3]} (and {len(missing)} in all)")
        for name, want in expected.items():
            if got[name].shape != want.shape:
                raise ExerciseFailed(
                    f"{exercise}: {name} has shape {tuple(got[name].shape)}, expected "
                    f"{tuple(want.shape)} with {n_shards} shards. Hint: {_hint_for(name)}")
            compare(got[name], want, exercise=f"{exercise} ({name}, {n_shards} shards)",
                    atol=0, rtol=0, diagnose=lambda _g, n=name: _hint_for(n))
    return passed(exercise, "2 and 4 shards, GQA, every weight kind")


def check_hf_names(fn: Callable[[str], str]) -> bool:
    """`fn(meta_name)` returns the Hugging Face name of a Meta parameter, e.g.
    'layers.3.attention.wq.weight' -> 'model.layers.3.self_attn.q_proj.weight'."""
    exercise = "Meta -> Hugging Face names"
    args = ModelArgs(dim=32, n_layers=12, n_heads=4, vocab_size=64, multiple_of=16)
    names = list(_on_meta(lambda: Transformer(args)).state_dict())
    for name in names:
        got = call_learner(fn, name, exercise=exercise)
        want = meta_to_hf_name(name)
        if got != want:
            hint = ""
            if name.endswith("feed_forward.w1.weight") or name.endswith("w3.weight"):
                hint = " Hint: w1 is the gate (gate_proj), w3 the up projection (up_proj)."
            elif name.endswith("ffn_norm.weight"):
                hint = " Hint: ffn_norm is HF's post_attention_layernorm."
            elif not got.startswith("model.") and name != "output.weight":
                hint = " Hint: everything but lm_head lives under 'model.'."
            raise ExerciseFailed(f"{exercise}: {name!r} -> expected {want!r}, got {got!r}.{hint}")
    return passed(exercise, f"all {len(names)} parameters of a 12-layer model")
