"""The Llama 2 architecture in one file, in the structure of Meta's reference (llama/model.py).

    tokens -> tok_embeddings -> n_layers x TransformerBlock -> norm -> output -> logits
    TransformerBlock:  h = x + attention(attention_norm(x));  out = h + feed_forward(ffn_norm(h))

Parameter names are Meta's, so `consolidated.00.pth` loads with no renaming; the Hugging Face
names are one mapping away (llama2_edu.checkpoint).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelArgs
from .kv_cache import KVCache


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight. Unlike LayerNorm it does not subtract the mean and
    has no bias: cheaper, and rescaling the input does not change the output."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In fp32 whatever the model dtype: squaring bf16 activations loses too much.
        # F.rms_norm computes exactly  x * rsqrt(mean(x^2) + eps)  (on CPU, torch 2.13 builds
        # it from the same elementary ops; other backends may fuse it).
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return normed.type_as(x) * self.weight


def precompute_rope(head_dim: int, max_seq_len: int, theta: float = 10000.0,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The rotations as unit complex numbers e^{i * pos * freq}, (max_seq_len, head_dim // 2).

    Pair i of a head turns by angle  pos * theta^(-2i / head_dim):  fast-turning pairs
    resolve nearby positions, slow ones far positions."""
    if device is not None and torch.device(device).type == "meta":
        # Shapes only (a model built on the meta device before loading weights): the math
        # on meta tensors runs through torch's Python reference kernels, seconds to import.
        return torch.empty(max_seq_len, head_dim // 2, dtype=torch.complex64, device=device)
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, device=device).float(), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate x (batch, seq, heads, head_dim) by the rotations (seq, head_dim // 2) of its
    positions.

    Meta's layout: the pairs are *adjacent* features (x0, x1), (x2, x3), ..., read as the
    complex number x0 + i x1 and turned by one complex multiplication. Hugging Face's
    `rotate_half` pairs feature i with feature i + head_dim/2 instead. Both are the same
    rotation on a permuted basis, which is why `checkpoint.meta_to_hf` permutes the rows of
    wq and wk.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (..., head_dim/2)
    rotated = torch.view_as_real(pairs * rotations[:, None, :])  # broadcast over heads
    return rotated.flatten(-2).type_as(x)


class Attention(nn.Module):
    """Causal self-attention with rotary positions. n_kv_heads == n_heads is MHA, 1 is MQA,
    anything between is GQA: each group of n_heads / n_kv_heads query heads shares one K/V head."""

    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, rotations: torch.Tensor, start_pos: int = 0,
                cache: KVCache | None = None) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        q = self.wq(x).view(batch, seq_len, self.n_heads, self.head_dim)
        k = self.wk(x).view(batch, seq_len, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(batch, seq_len, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, rotations), apply_rope(k, rotations)  # V carries no position
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)

        if cache is not None:
            k, v = cache.update(self.layer_id, start_pos, k, v)  # now all positions so far
        mask, is_causal = causal_mask(seq_len, k.shape[2], x.device)

        # enable_gqa lets each K/V head serve its group of query heads without materialising
        # copies (Meta's reference repeats them with `repeat_kv`; the result is the same).
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                             enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(out.transpose(1, 2).reshape(batch, seq_len, -1))


def causal_mask(n_queries: int, n_keys: int, device=None):
    """(mask, is_causal) for queries that are the *last* n_queries of n_keys positions.

    A single query may see every key; queries == keys is the plain causal case that SDPA
    handles itself; a chunk appended to a cache needs an explicit mask, offset by the prefix."""
    if n_queries == 1:
        return None, False
    if n_queries == n_keys:
        return None, True
    offset = n_keys - n_queries
    query_pos = torch.arange(n_queries, device=device)[:, None] + offset
    return query_pos >= torch.arange(n_keys, device=device)[None, :], False


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x). The gate w3 x lets each hidden unit scale its own output."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: normalise the input of each sublayer, never the residual stream."""

    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.attention = Attention(args, layer_id)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, rotations, start_pos: int = 0, cache: KVCache | None = None):
        h = x + self.attention(self.attention_norm(x), rotations, start_pos, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)  # not tied to embeddings
        # The rotation table is derived, not learned, and it must stay complex64 in fp32
        # precision whatever the weights' dtype: a registered buffer would be cast by
        # `model.to(torch.bfloat16)` (dropping its imaginary part). So, as in Meta's reference,
        # it is a plain attribute that follows the tokens' device in forward. Not in the state
        # dict either. Built on the parameters' device (on "meta", see init_rope).
        self.rope = precompute_rope(args.head_dim, args.max_seq_len, args.rope_theta,
                                    device=self.output.weight.device)
        if self.output.weight.device.type != "meta":
            self.apply(self._init_weights)
            self._scale_residual_projections()

    def init_rope(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the rotation tables, e.g. after a model built on the meta device has
        had real weights assigned."""
        device = device if device is not None else self.output.weight.device
        self.rope = precompute_rope(self.args.head_dim, self.args.max_seq_len,
                                    self.args.rope_theta, device=device)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Meta's reference ships no initialiser (it only loads weights); for training from
        # scratch we use the GPT-2 recipe as in nanoGPT: N(0, 0.02) for every matrix.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _scale_residual_projections(self) -> None:
        # Each block adds two outputs (wo, w2) to the residual stream; shrinking their init by
        # sqrt(2 * n_layers) keeps the stream's variance from growing with depth.
        std = 0.02 / math.sqrt(2 * self.args.n_layers)
        for layer in self.layers:
            nn.init.normal_(layer.attention.wo.weight, mean=0.0, std=std)
            nn.init.normal_(layer.feed_forward.w2.weight, mean=0.0, std=std)

    def new_cache(self, batch_size: int, max_seq_len: int | None = None) -> KVCache:
        """A preallocated KV cache on the model's device and dtype."""
        max_seq_len = max_seq_len or self.args.max_seq_len
        if max_seq_len > self.args.max_seq_len:
            raise ValueError(f"cache length {max_seq_len} exceeds the model's max_seq_len "
                             f"{self.args.max_seq_len}")
        weight = self.output.weight
        return KVCache(self.args.n_layers, batch_size, max_seq_len, self.args.kv_heads,
                       self.args.head_dim, dtype=weight.dtype, device=weight.device)

    def forward(self, tokens: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Logits (batch, seq, vocab) in fp32 for `tokens` (batch, seq) at positions
        start_pos, start_pos + 1, ...  With a cache, earlier positions come from it.
        `last_only` computes logits for the final position only (all that sampling needs)."""
        batch, seq_len = tokens.shape
        if start_pos + seq_len > self.args.max_seq_len:
            raise ValueError(f"positions {start_pos}..{start_pos + seq_len - 1} exceed "
                             f"max_seq_len {self.args.max_seq_len}")
        h = self.tok_embeddings(tokens)
        if self.rope.device != tokens.device:  # the model was moved with .to(device)
            self.rope = self.rope.to(tokens.device)
        rotations = self.rope[start_pos:start_pos + seq_len]
        for layer in self.layers:
            h = layer(h, rotations, start_pos, cache)
        if last_only:
            h = h[:, -1:]
        return self.output(self.norm(h)).float()
