"""Model hyperparameters, the published Llama 2 shapes, and arithmetic on them.

`ModelArgs` uses the field names of Meta's reference code (llama/model.py), so a
`params.json` from a Meta download maps onto it field for field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None means n_heads (MHA); 1 is MQA; in between is GQA
    vocab_size: int = 32000
    multiple_of: int = 256  # the SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 4096

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelArgs.{name} must be a positive int, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim = dim / n_heads = {self.head_dim} must be even for RoPE")
        kv = self.kv_heads
        if not 1 <= kv <= self.n_heads or self.n_heads % kv:
            raise ValueError(
                f"n_kv_heads ({kv}) must divide n_heads ({self.n_heads}) and lie in [1, n_heads]"
            )
        if self.norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError(
                f"norm_eps ({self.norm_eps}) and rope_theta ({self.rope_theta}) must be positive"
            )

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU hidden size by Meta's rule: 2/3 of 4*dim (three matrices cost what two did),
        times the optional multiplier, rounded up to `multiple_of`."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelArgs":
        """A named configuration; keyword overrides replace single fields."""
        if name not in PRESETS:
            known = ", ".join(sorted(PRESETS))
            raise KeyError(f"unknown preset {name!r}; known presets: {known}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes) -> "ModelArgs":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, ModelArgs] = {
    # Small enough to train on a laptop CPU in minutes; GQA on (4 query heads share 2 KV heads).
    "toy": ModelArgs(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=1024,
                     multiple_of=32, max_seq_len=256),
    # Tiny shapes for tests: one of each attention kind.
    "tiny-mha": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=128, multiple_of=16,
                          max_seq_len=128),
    "tiny-gqa": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128,
                          multiple_of=16, max_seq_len=128),
    "tiny-mqa": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=128,
                          multiple_of=16, max_seq_len=128),
    # The shapes of Karpathy's llama2.c "TinyStories" models (dim/layers/heads from its README),
    # with the Llama 2 vocabulary, for benchmarks against a familiar reference point.
    "stories15m": ModelArgs(dim=288, n_layers=6, n_heads=6, vocab_size=32000, multiple_of=32,
                            max_seq_len=256),
    "stories42m": ModelArgs(dim=512, n_layers=8, n_heads=8, vocab_size=32000, multiple_of=32,
                            max_seq_len=1024),
    "stories110m": ModelArgs(dim=768, n_layers=12, n_heads=12, vocab_size=32000, multiple_of=32,
                             max_seq_len=1024),
    # The published Llama 2 shapes (params.json of Meta's release).
    "llama2-7b": ModelArgs(dim=4096, n_layers=32, n_heads=32),
    "llama2-13b": ModelArgs(dim=5120, n_layers=40, n_heads=40),
    # Meta never released Llama 2 34B; these are Code Llama 34B's shapes with Llama 2's
    # rope_theta (Code Llama itself uses 1e6) and context.
    "llama2-34b": ModelArgs(dim=8192, n_layers=48, n_heads=64, n_kv_heads=8,
                            ffn_dim_multiplier=1.0, multiple_of=256),
    "llama2-70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                            ffn_dim_multiplier=1.3, multiple_of=4096),
}


def count_parameters(args: ModelArgs) -> int:
    """Parameters of `Transformer(args)`, by formula; nothing is allocated."""
    kv_dim = args.kv_heads * args.head_dim
    attention = 2 * args.dim * args.dim + 2 * args.dim * kv_dim  # wq, wo; wk, wv
    feed_forward = 3 * args.dim * args.hidden_dim  # w1, w2, w3
    norms = 2 * args.dim  # attention_norm, ffn_norm
    per_layer = attention + feed_forward + norms
    embeddings = 2 * args.vocab_size * args.dim  # tok_embeddings and the untied output
    return args.n_layers * per_layer + embeddings + args.dim  # + the final norm


def bytes_per_element(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def weight_bytes(args: ModelArgs, dtype: torch.dtype = torch.bfloat16) -> int:
    """Memory for the weights alone at `dtype`."""
    return count_parameters(args) * bytes_per_element(dtype)


def kv_cache_bytes(args: ModelArgs, batch_size: int, seq_len: int,
                   dtype: torch.dtype = torch.bfloat16) -> int:
    """Memory for a KV cache: K and V, per layer, per KV head, per position."""
    per_token = 2 * args.n_layers * args.kv_heads * args.head_dim * bytes_per_element(dtype)
    return batch_size * seq_len * per_token
