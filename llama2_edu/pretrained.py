"""The book's toy base model: one call returns it, trained deterministically or loaded from the
cache. Later chapters (generation, SFT, reward models, PPO) start from it.

    model, tokenizer = toy_base_model()

Everything that decides the result is in `TOY_RECIPE` (corpus size, tokenizer, model shape,
training schedule). The cache key is a hash of the recipe, of the corpus text and of the
tokenizer file, so changing any of them trains a new model instead of loading a stale one.

Cache folder: $LLAMA2_EDU_CACHE if set; else `<repo>/.cache/llama2_edu` when running from a
checkout; else ~/.cache/llama2_edu. Files are written atomically.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch

from .config import ModelArgs
from .data import EXTRA_TOKENIZER_TEXT, Batches, generate_documents, make_world
from .model import Transformer
from .tokenizer import Tokenizer, train_tokenizer
from .train import TrainConfig, atomic_save, train

# Bump when library code changes what the recipe produces (e.g. the model's initialisation).
RECIPE_VERSION = 1

CHAT_TAGS = ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]

TOY_RECIPE: dict = {
    "version": RECIPE_VERSION,
    "corpus": {"world_seed": 0, "seed": 0, "n_train_docs": 20000, "n_val_docs": 500},
    # Deviation from Meta: the chat tags are single pieces (Meta's tokenizer splits them).
    "tokenizer": {"vocab_size": 1024, "user_defined_symbols": CHAT_TAGS},
    "model": ModelArgs.preset("toy").to_dict(),
    "data": {"seq_len": 256, "batch_size": 8, "seed": 0},
    "train": TrainConfig(max_steps=1000, lr=3e-3, warmup_steps=50, eval_every=100,
                         eval_batches=None, seed=0).to_dict(),
    "init_seed": 0,
}


def default_cache_dir() -> Path:
    env = os.environ.get("LLAMA2_EDU_CACHE")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file() and (repo / "llama2_edu").is_dir():
        return repo / ".cache" / "llama2_edu"
    return Path.home() / ".cache" / "llama2_edu"


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _json(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=list)


# ---- corpus ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _corpus(split: str, recipe_json: str) -> tuple[str, ...]:
    c = json.loads(recipe_json)
    n = c["n_train_docs"] if split == "train" else c["n_val_docs"]
    return tuple(generate_documents(n, split, seed=c["seed"], world=make_world(c["world_seed"])))


def toy_corpus(split: str = "train", recipe: dict | None = None) -> list[str]:
    """The documents the toy base model is trained ("train") and evaluated ("val") on."""
    recipe = recipe or TOY_RECIPE
    return list(_corpus(split, _json(recipe["corpus"])))


def toy_world(recipe: dict | None = None):
    """The world the toy corpus describes (for questions with checkable answers)."""
    return make_world((recipe or TOY_RECIPE)["corpus"]["world_seed"])


# ---- tokenizer -------------------------------------------------------------------------------
def _tokenizer_key(recipe: dict) -> str:
    corpus_hash = _sha(*toy_corpus("train", recipe))
    return _sha(_json(recipe["corpus"]), _json(recipe["tokenizer"]), corpus_hash,
                *EXTRA_TOKENIZER_TEXT)


def toy_tokenizer(*, cache_dir: str | os.PathLike | None = None, retrain: bool = False,
                  recipe: dict | None = None) -> Tokenizer:
    """A Llama-style BPE tokenizer trained on the toy corpus (plus EXTRA_TOKENIZER_TEXT),
    with the chat tags as single pieces; cached."""
    recipe = recipe or TOY_RECIPE
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"toy_tokenizer-{_tokenizer_key(recipe)}.model"
    if path.is_file() and not retrain:
        return Tokenizer(path)
    # One line per sentence piece of input: SentencePiece reads "sentences"; newlines inside
    # documents are left to byte fallback, as in Llama's tokenizer.
    lines = [line for doc in toy_corpus("train", recipe) for line in doc.split("\n")]
    opts = recipe["tokenizer"]
    return train_tokenizer(lines + list(EXTRA_TOKENIZER_TEXT), opts["vocab_size"], path,
                           user_defined_symbols=list(opts["user_defined_symbols"]))


# ---- data and model --------------------------------------------------------------------------
def toy_batches(tokenizer: Tokenizer, recipe: dict | None = None) -> tuple[Batches, Batches]:
    """(train, val) batches of the toy corpus, packed as the recipe says."""
    recipe = recipe or TOY_RECIPE
    d = recipe["data"]
    train_b = Batches.from_documents(tokenizer, toy_corpus("train", recipe), d["seq_len"],
                                     d["batch_size"], seed=d["seed"])
    val_b = Batches.from_documents(tokenizer, toy_corpus("val", recipe), d["seq_len"],
                                   d["batch_size"], seed=d["seed"], shuffle=False)
    return train_b, val_b


def toy_model_args(tokenizer: Tokenizer | None = None, recipe: dict | None = None) -> ModelArgs:
    recipe = recipe or TOY_RECIPE
    args = ModelArgs(**recipe["model"])
    if tokenizer is not None and tokenizer.n_words != args.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.n_words} pieces but the model's "
                         f"vocab_size is {args.vocab_size}")
    return args


def toy_train_config(recipe: dict | None = None, **overrides) -> TrainConfig:
    saved = dict((recipe or TOY_RECIPE)["train"])
    saved["betas"] = tuple(saved["betas"])
    return TrainConfig(**{**saved, **overrides})


def _model_path(folder: Path, recipe: dict, tokenizer: Tokenizer) -> Path:
    key = _sha(_json(recipe), tokenizer.path.read_bytes())
    return folder / f"toy_base-{key}.pt"


def train_toy_base_model(*, cache_dir: str | os.PathLike | None = None, progress: bool = False,
                         on_eval: Callable | None = None, recipe: dict | None = None,
                         ) -> tuple[Transformer, Tokenizer, dict]:
    """Train the toy base model by the recipe (always), write it to the cache, and return
    (model, tokenizer, history). The notebook on pretraining calls this to watch it learn."""
    recipe = copy.deepcopy(recipe or TOY_RECIPE)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tokenizer = toy_tokenizer(cache_dir=folder, recipe=recipe)
    train_b, val_b = toy_batches(tokenizer, recipe)
    torch.manual_seed(recipe["init_seed"])
    model = Transformer(toy_model_args(tokenizer, recipe))
    config = toy_train_config(recipe, progress=progress)
    history = train(model, train_b, val_b, config, on_eval=on_eval)
    atomic_save({"args": model.args.to_dict(), "model": model.state_dict(),
                 "history": history, "recipe": _json(recipe)},
                _model_path(folder, recipe, tokenizer))
    return model.eval(), tokenizer, history


def toy_base_model(*, cache_dir: str | os.PathLike | None = None, retrain: bool = False,
                   progress: bool = False, recipe: dict | None = None
                   ) -> tuple[Transformer, Tokenizer]:
    """The toy base model (GQA, trained on the toy corpus) and its tokenizer: loaded from the
    cache when this exact recipe was trained before, else trained now (a few minutes on CPU)."""
    recipe = recipe or TOY_RECIPE
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tokenizer = toy_tokenizer(cache_dir=folder, recipe=recipe)
    path = _model_path(folder, recipe, tokenizer)
    if path.is_file() and not retrain:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = Transformer(ModelArgs(**state["args"]))
        model.load_state_dict(state["model"])
        return model.eval(), tokenizer
    model, tokenizer, _ = train_toy_base_model(cache_dir=folder, progress=progress,
                                               recipe=recipe)
    return model, tokenizer


def toy_base_history(*, cache_dir: str | os.PathLike | None = None,
                     recipe: dict | None = None) -> dict:
    """The training history stored with the cached toy base model (trains it if needed)."""
    recipe = recipe or TOY_RECIPE
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    toy_base_model(cache_dir=folder, recipe=recipe)
    tokenizer = toy_tokenizer(cache_dir=folder, recipe=recipe)
    return torch.load(_model_path(folder, recipe, tokenizer), map_location="cpu",
                      weights_only=True)["history"]


# ---- what the model learned ------------------------------------------------------------------
def complete(model: Transformer, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0, batch_size: int = 64) -> list[str]:
    """Continue each prompt (BOS + prompt) and return only the new text. Greedy by default."""
    from .generation import generate

    g = torch.Generator(device=model.output.weight.device).manual_seed(seed)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = [tokenizer.encode(p, bos=True, eos=False) for p in prompts[start:start + batch_size]]
        new = generate(model, chunk, max_new_tokens, temperature=temperature, top_p=1.0,
                       eos_id=tokenizer.eos_id, generator=g)
        # Decode prompt and continuation together so the continuation's spaces come out right.
        for ids, gen in zip(chunk, new):
            out.append(tokenizer.decode(ids[1:] + gen)[len(tokenizer.decode(ids[1:])):])
    return out


def arithmetic_accuracy(model: Transformer, tokenizer: Tokenizer,
                        problems: list[tuple[int, str, int, int]]) -> float:
    """Exact-match accuracy of greedy completions of "a + b =" against " result."."""
    from .data.world import problem_text

    prompts = [problem_text(a, op, b) for a, op, b, _ in problems]
    answers = complete(model, tokenizer, prompts, max_new_tokens=6)
    right = [ans.startswith(f" {r}.") for ans, (*_, r) in zip(answers, problems)]
    return sum(right) / max(len(right), 1)
