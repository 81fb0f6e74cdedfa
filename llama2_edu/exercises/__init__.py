"""Automatic checks for the book's exercises: `check_...(your_function)` compares a learner's
implementation with the reference on random inputs and explains what is wrong when it is.

One module per chapter; each check is re-exported here so notebooks can write
`from llama2_edu.exercises import check_rmsnorm`.
"""
from .attention import check_causal_attention, check_gqa_attention, check_repeat_kv
from .swiglu import check_hidden_dim, check_swiglu
from .transformer import check_transformer, check_transformer_block
from .introduction import check_param_count, check_weight_gib
from .rmsnorm import check_layernorm, check_rmsnorm
from .rope import check_rope, check_unpermute
from .tokenizer import check_bpe_merge, check_chat_format, check_count_pairs
from .generation import check_sample_next, check_top_p
from .rlhf import check_answer_logprob, check_combine_rewards, check_dpo_loss, check_gae, check_ppo_clip_loss
from .pretraining import check_decay_groups, check_lr_schedule, check_pack_documents
from .alignment import check_last_token_reward, check_pack, check_ranking_loss, check_sft_labels
from .checkpoints import check_hf_names, check_merge_shards
