"""llama2_edu: the companion library of the llama2-edu textbook.

    import llama2_edu as L
    args = L.ModelArgs.preset("llama2-7b"); L.count_parameters(args)   # 6_738_415_616
    model = L.Transformer(L.ModelArgs.preset("toy"))
"""

from . import chat, checkpoint, generation, scale
from .checkpoint_io import CheckpointError, load_pretrained, load_tokenizer
from .config import PRESETS, ModelArgs, count_parameters, kv_cache_bytes, weight_bytes
from .generation import generate, sample_next, top_p_filter
from .kv_cache import KVCache
from .model import Attention, FeedForward, RMSNorm, Transformer, TransformerBlock

__all__ = [
    "PRESETS", "ModelArgs", "count_parameters", "kv_cache_bytes", "weight_bytes",
    "Transformer", "TransformerBlock", "Attention", "FeedForward", "RMSNorm", "KVCache",
    "load_pretrained", "load_tokenizer", "CheckpointError",
    "generate", "sample_next", "top_p_filter", "chat", "checkpoint", "generation",
]
