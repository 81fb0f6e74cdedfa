"""Plain text in, token batches out: packing documents into fixed-length rows, and a seeded
batch iterator whose position can be saved and restored (for exact resume).

Packing, as in Llama's pretraining: every document is encoded as BOS ... EOS, the documents are
concatenated into one stream, and the stream is cut into rows of `seq_len + 1` tokens that
overlap by one, so that row i gives inputs stream[iT : iT+T] and targets stream[iT+1 : iT+T+1].
Every token of the stream (but the first) is a target exactly once. Attention is not blocked at
document boundaries; the model learns that BOS starts something new.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

IGNORE_INDEX = -100  # targets with this value add nothing to the loss (cross_entropy's default)


def encode_documents(tokenizer, docs: Iterable[str]) -> list[list[int]]:
    """Each document as BOS + tokens + EOS."""
    return [tokenizer.encode(d, bos=True, eos=True) for d in docs]


def pack(token_docs: Sequence[Sequence[int]], seq_len: int,
         pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate tokenised documents and cut them into (inputs, targets), each (rows, seq_len).

    The last row is padded: its missing inputs are `pad_id` and its missing targets are
    IGNORE_INDEX, so no token is lost and none is invented."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    stream = torch.tensor([t for doc in token_docs for t in doc], dtype=torch.long)
    if stream.numel() < 2:
        raise ValueError(f"need at least 2 tokens to pack, got {stream.numel()}")
    n_targets = stream.numel() - 1
    rows = -(-n_targets // seq_len)  # ceil
    inputs = torch.full((rows * seq_len,), pad_id, dtype=torch.long)
    targets = torch.full((rows * seq_len,), IGNORE_INDEX, dtype=torch.long)
    inputs[:n_targets] = stream[:-1]
    targets[:n_targets] = stream[1:]
    return inputs.view(rows, seq_len), targets.view(rows, seq_len)


class Batches:
    """Endless seeded batches of rows of (inputs, targets).

    The order is a fresh permutation of the rows for each epoch (seeded by `seed` and the epoch
    number), read `batch_size` rows at a time across epoch boundaries. The whole state is one
    integer, `position` (rows consumed so far), so saving and restoring it resumes exactly.
    Targets may hold IGNORE_INDEX (-100), e.g. loss masks for fine-tuning."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int,
                 seed: int = 0, shuffle: bool = True):
        if inputs.shape != targets.shape or inputs.dim() != 2:
            raise ValueError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} "
                             "must have the same (rows, seq_len) shape")
        if not 1 <= batch_size:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.position = 0
        self._epoch_cache: tuple[int, torch.Tensor] | None = None

    @classmethod
    def from_documents(cls, tokenizer, docs: Iterable[str], seq_len: int, batch_size: int,
                       seed: int = 0, shuffle: bool = True) -> "Batches":
        inputs, targets = pack(encode_documents(tokenizer, docs), seq_len)
        return cls(inputs, targets, batch_size, seed, shuffle)

    @property
    def n_rows(self) -> int:
        return self.inputs.shape[0]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    def __len__(self) -> int:
        """Full batches per epoch."""
        return self.n_rows // self.batch_size

    def n_target_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    def _order(self, epoch: int) -> torch.Tensor:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(self.n_rows, generator=g)
            else:
                order = torch.arange(self.n_rows)
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (inputs, targets), each (batch_size, seq_len)."""
        parts, need = [], self.batch_size
        while need:
            epoch, offset = divmod(self.position, self.n_rows)
            take = min(need, self.n_rows - offset)
            parts.append(self._order(epoch)[offset:offset + take])
            self.position += take
            need -= take
        rows = torch.cat(parts)
        return self.inputs[rows], self.targets[rows]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def sequential(self, max_batches: int | None = None
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every row once, in order, without touching the position (for evaluation)."""
        for i, start in enumerate(range(0, self.n_rows, self.batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            yield (self.inputs[start:start + self.batch_size],
                   self.targets[start:start + self.batch_size])

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "n_rows": self.n_rows}

    def load_state_dict(self, state: dict) -> None:
        if state["n_rows"] != self.n_rows or state["seed"] != self.seed:
            raise ValueError(f"checkpoint data state (rows {state['n_rows']}, seed "
                             f"{state['seed']}) does not match these batches (rows "
                             f"{self.n_rows}, seed {self.seed})")
        self.position = int(state["position"])
