"""Meta <-> Hugging Face state dicts, and the transformers config for our ModelArgs.

The two formats hold the same numbers under different names, with one twist: Hugging Face
applies RoPE with `rotate_half` (pairs feature i with i + head_dim/2) where Meta rotates
adjacent pairs (2i, 2i+1). The conversion therefore permutes the output rows of wq and wk
within each head so that HF's pairing lands on Meta's pairs. wk has n_kv_heads heads, so it
is permuted per KV head.
"""

from __future__ import annotations

import re

import torch

from .config import ModelArgs

# Meta name pattern -> Hugging Face name pattern ("{}" is the layer index).
_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_GLOBAL_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_META_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


def meta_to_hf_name(name: str) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    match = _META_LAYER.fullmatch(name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    raise KeyError(f"not a Llama parameter name in Meta's format: {name!r}")


def hf_to_meta_name(name: str) -> str:
    for meta, hf in _GLOBAL_NAMES.items():
        if name == hf:
            return meta
    match = _HF_LAYER.fullmatch(name)
    if match:
        for meta, hf in _LAYER_NAMES.items():
            if match.group(2) == hf:
                return f"layers.{match.group(1)}.{meta}"
    raise KeyError(f"not a Llama parameter name in Hugging Face's format: {name!r}")


def permute_for_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta row order (per head: pair 0 = rows 0,1; pair 1 = rows 2,3; ...) to HF's
    (per head: first halves of all pairs, then second halves)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def unpermute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `permute_for_hf`."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def meta_to_hf(state_dict: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """A Meta-named state dict as transformers' `LlamaForCausalLM` expects it."""
    out = {}
    for name, tensor in state_dict.items():
        if name.endswith("attention.wq.weight"):
            tensor = permute_for_hf(tensor, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            tensor = permute_for_hf(tensor, args.kv_heads)
        out[meta_to_hf_name(name)] = tensor
    return out


def hf_to_meta(state_dict: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """A transformers `LlamaForCausalLM` state dict with Meta's names and row order.
    Derived buffers (`rotary_emb.inv_freq` in older checkpoints) are dropped."""
    out = {}
    for name, tensor in state_dict.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        meta_name = hf_to_meta_name(name)
        if meta_name.endswith("attention.wq.weight"):
            tensor = unpermute_from_hf(tensor, args.n_heads)
        elif meta_name.endswith("attention.wk.weight"):
            tensor = unpermute_from_hf(tensor, args.kv_heads)
        out[meta_name] = tensor
    return out


def hf_config_dict(args: ModelArgs) -> dict:
    """The fields of a Hugging Face `config.json` for these args.

    transformers 5 moved `rope_theta` into `rope_parameters`; older releases read it at the top
    level. Both are written so that either generation of the library reads the same model."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": args.vocab_size,
        "hidden_size": args.dim,
        "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def args_from_hf_config(config: dict) -> ModelArgs:
    """ModelArgs from a Hugging Face `config.json` (either rope_theta location).

    HF stores the final hidden size, not Meta's (multiple_of, ffn_dim_multiplier) recipe;
    `multiple_of=intermediate_size` with no multiplier reproduces it exactly."""
    rope = config.get("rope_parameters") or {}
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    hidden = config["intermediate_size"]
    args = ModelArgs(
        dim=config["hidden_size"], n_layers=config["num_hidden_layers"],
        n_heads=config["num_attention_heads"],
        n_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        vocab_size=config["vocab_size"], multiple_of=hidden, ffn_dim_multiplier=None,
        norm_eps=config.get("rms_norm_eps", 1e-5), rope_theta=float(theta),
        max_seq_len=config.get("max_position_embeddings", 4096),
    )
    if args.hidden_dim != hidden:  # only possible when hidden < 2/3 * 4 * dim
        raise ValueError(f"cannot express intermediate_size {hidden} with dim {args.dim}")
    return args


def hf_config(args: ModelArgs, **overrides):
    """A transformers `LlamaConfig` equal to `args`, fp32 and eager attention by default.
    The one place that knows transformers' config API (it drifted in v5: rope_parameters,
    dtype)."""
    from transformers import LlamaConfig

    fields = hf_config_dict(args)
    for key in ("architectures", "model_type", "rope_theta"):
        fields.pop(key)
    fields.update(overrides)
    config = LlamaConfig(**fields)
    config._attn_implementation = "eager"
    return config
