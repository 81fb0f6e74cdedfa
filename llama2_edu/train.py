"""The pretraining loop of the Llama 2 paper (section 2.2), scaled down to a laptop.

    AdamW, beta1 0.9, beta2 0.95, eps 1e-5, weight decay 0.1 (on matrices only)
    linear warmup, then cosine decay of the learning rate to 10% of its peak
    gradient clipping at global norm 1.0

plus what any long run needs: optional bf16 autocast, gradient accumulation, a progress bar,
evaluation on held-out data, atomic checkpoints (model, optimizer, schedule step, RNG states,
data position, history) and exact resume: a run stopped and resumed gives bitwise the losses of
a run that never stopped (on CPU).

The loop also serves fine-tuning: batches are (inputs, targets) and targets equal to -100 are
ignored, which is how a loss mask is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data.batching import IGNORE_INDEX

CHECKPOINT_NAME = "last.pt"


@dataclass(frozen=True)
class TrainConfig:
    """One training run's recipe. Defaults are the Llama 2 paper's where it states them."""

    max_steps: int = 1000  # optimizer steps
    lr: float = 3e-3  # peak learning rate (the paper's 3e-4 is for 7B; small models take more)
    warmup_steps: int = 100  # the paper warms up for 2000 steps
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-5
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1  # micro-batches per optimizer step
    bf16: bool = False  # autocast matmuls to bfloat16
    eval_every: int = 100  # steps between evaluations (and always at the last step); 0: never
    eval_batches: int | None = None  # cap on validation batches per evaluation; None: all
    checkpoint_every: int = 0  # steps between checkpoints (and the last step); 0: last only
    seed: int = 0
    progress: bool = False  # tqdm bar with loss and tokens/s

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.grad_accum < 1:
            raise ValueError(f"max_steps ({self.max_steps}) and grad_accum ({self.grad_accum}) "
                             "must be >= 1")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must lie in [0, max_steps "
                             f"= {self.max_steps}]")
        if not 0 <= self.min_lr_ratio <= 1 or self.lr <= 0:
            raise ValueError(f"lr ({self.lr}) must be > 0 and min_lr_ratio "
                             f"({self.min_lr_ratio}) in [0, 1]")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup reaching the peak at
    step warmup_steps - 1, then a half cosine from the peak (step warmup_steps) down to
    min_lr_ratio * peak at step max_steps (and flat after it)."""
    peak, floor = config.lr, config.lr * config.min_lr_ratio
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear and embedding weights) only: decaying the gains of
    RMSNorm (and any bias) would pull them towards 0, which is not regularisation."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr,
                             betas=config.betas, eps=config.eps)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy; targets equal to -100 are ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction=reduction)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate(model: nn.Module, data, max_batches: int | None = None,
             bf16: bool = False) -> float:
    """Mean loss per target token over `data.sequential()` (every row once, in order)."""
    was_training = model.training
    model.eval()
    device = _device(model)
    total, count = 0.0, 0
    for inputs, targets in data.sequential(max_batches):
        inputs, targets = inputs.to(device), targets.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(inputs)
        total += float(loss_fn(logits, targets, reduction="sum"))
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(count, 1)


# ---- checkpoints -----------------------------------------------------------------------------
def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, then rename it over `path`: a crash
    mid-write leaves the previous checkpoint intact and no partial file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by `train` with weights_only=True: tensors and plain
    containers only, so a file cannot run code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _rng_state() -> dict:
    # Python's state is (version, tuple of 625 ints, gauss_next): stored as a tensor and plain
    # values so that weights_only loading accepts it.
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _new_history() -> dict[str, list]:
    return {"step": [], "loss": [], "lr": [], "tokens": [],
            "val_step": [], "val_tokens": [], "val_loss": []}


# ---- the loop --------------------------------------------------------------------------------
def train(model: nn.Module, train_data, val_data=None, config: TrainConfig = TrainConfig(),
          checkpoint_dir: str | os.PathLike | None = None, resume: bool = True,
          on_eval: Callable[[int, nn.Module, dict], None] | None = None,
          stop_after: int | None = None) -> dict[str, list]:
    """Train `model` for `config.max_steps` optimizer steps; return the history.

    train_data: a `llama2_edu.data.Batches` (or anything with next_batch() -> (inputs,
    targets), state_dict() and load_state_dict()). val_data: anything with
    sequential(max_batches). With `checkpoint_dir`, the run saves `last.pt` there every
    `checkpoint_every` steps and at the end, and (if `resume`) continues from it when it exists.
    `on_eval(step, model, history)` runs after each evaluation (e.g. to sample text).
    `stop_after` stops after that many steps, as an interruption would (the schedule still
    follows max_steps).

    History: per step "step", "loss" (mean over target tokens), "lr", "tokens" (tokens seen so
    far); per evaluation "val_step", "val_tokens", "val_loss"."""
    from tqdm import tqdm  # the plain bar: tqdm.auto needs ipywidgets in notebooks

    device = _device(model)
    optimizer = make_optimizer(model, config)
    history = _new_history()
    start_step = 0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None

    if ckpt_path is not None and resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        saved = state["config"]
        saved["betas"] = tuple(saved["betas"])
        if TrainConfig(**saved) != config:
            raise ValueError(f"the checkpoint at {ckpt_path} was written with a different "
                             f"TrainConfig ({saved}); pass resume=False or another directory")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        train_data.load_state_dict(state["data"])
        _set_rng_state(state["rng"])
        history = state["history"]
        start_step = int(state["step"])
    else:
        torch.manual_seed(config.seed)
        random.seed(config.seed)

    def save(step: int) -> None:
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "step": step, "rng": _rng_state(), "data": train_data.state_dict(),
                     "history": history, "config": config.to_dict()}, ckpt_path)

    end_step = config.max_steps if stop_after is None else min(config.max_steps, stop_after)
    model.train()
    bar = tqdm(total=config.max_steps, initial=start_step, disable=not config.progress,
               desc="train", dynamic_ncols=True)
    tokens_seen = history["tokens"][-1] if history["tokens"] else 0
    window_start, window_tokens = time.perf_counter(), 0
    for step in range(start_step, end_step):
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = [train_data.next_batch() for _ in range(config.grad_accum)]
        # Normalise by the target count of the whole step, so that accumulation (and loss
        # masks of different sizes) weight every token equally.
        n_targets = sum(int((t != IGNORE_INDEX).sum()) for _, t in micro)
        step_loss = 0.0
        for inputs, targets in micro:
            inputs, targets = inputs.to(device), targets.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                logits = model(inputs)
            loss = loss_fn(logits, targets, reduction="sum") / max(n_targets, 1)
            loss.backward()
            step_loss += float(loss.detach())
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        n_tokens = sum(inputs.numel() for inputs, _ in micro)
        tokens_seen += n_tokens
        window_tokens += n_tokens
        done = step + 1
        history["step"].append(done)
        history["loss"].append(step_loss)
        history["lr"].append(lr)
        history["tokens"].append(tokens_seen)
        if config.progress:
            elapsed = time.perf_counter() - window_start
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{window_tokens / elapsed:.0f}")
        bar.update(1)

        last = done == config.max_steps
        if val_data is not None and ((config.eval_every and done % config.eval_every == 0)
                                     or last):
            val_loss = evaluate(model, val_data, config.eval_batches, config.bf16)
            history["val_step"].append(done)
            history["val_tokens"].append(tokens_seen)
            history["val_loss"].append(val_loss)
            if config.progress:
                bar.write(f"step {done}: val loss {val_loss:.3f}")
            if on_eval is not None:
                on_eval(done, model, history)
            model.train()
        if ckpt_path is not None and ((config.checkpoint_every
                                       and done % config.checkpoint_every == 0) or last):
            save(done)
    bar.close()
    model.eval()
    return history
