"""The Llama 2 chat format: a dialog of role/content messages to token ids, as Meta builds it.

Meta's reference (llama/generation.py, `chat_completion`) turns a dialog into tokens like this:

    [BOS] [INST] {user 1} [/INST] {answer 1} [EOS] [BOS] [INST] {user 2} [/INST] {answer 2} [EOS]
    ... [BOS] [INST] {last user message} [/INST]

An optional system message is folded into the first user message between `<<SYS>>\\n` and
`\\n<</SYS>>\\n\\n`. Each completed (user, assistant) pair is one string,
`f"[INST] {user.strip()} [/INST] {answer.strip()} "`, encoded with BOS and EOS; the final user
message is encoded with BOS only, and the model's reply follows it. The tags are plain text to
the tokenizer (they are not special tokens), so a user who typed them could forge turns: Meta
refuses such prompts, and so do we (with a ValueError).

`encode_dialog_with_answer` also returns, per token, whether it belongs to an assistant answer:
supervised fine-tuning computes its loss on those tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
# What may not appear inside any message (Meta's SPECIAL_TAGS).
SPECIAL_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")

ROLES = ("system", "user", "assistant")
_SHAPE = ("a dialog is: an optional system message, then user and assistant messages "
          "alternating, starting with user")


class _Encoder(Protocol):
    def encode(self, s: str, bos: bool, eos: bool) -> list[int]: ...


Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class Turn:
    """One user prompt and, when the turn is complete, the assistant's answer.

    `prompt` is the text `[INST] ... [/INST]` (with the system message folded into the first
    one); `answer` is the stripped reply, or None for the last, open turn."""

    prompt: str
    answer: str | None = None

    @property
    def text(self) -> str:
        """The exact string Meta encodes for this turn."""
        return self.prompt if self.answer is None else f"{self.prompt} {self.answer} "


def check_dialog(dialog: Sequence[Message], *, last: str = "user") -> None:
    """Raise ValueError naming the offending message unless `dialog` has the shape
    system?, user, assistant, user, ..., ending with the role `last` ("user", "assistant",
    or "any"), and no message contains a special tag."""
    if last not in ("user", "assistant", "any"):
        raise ValueError(f"last must be 'user', 'assistant' or 'any', got {last!r}")
    if isinstance(dialog, (str, dict)) or not isinstance(dialog, Sequence):
        raise TypeError(f"a dialog is a list of {{'role', 'content'}} dicts, got "
                        f"{type(dialog).__name__}")
    if len(dialog) == 0:
        raise ValueError("the dialog is empty; it needs at least one user message")
    for i, message in enumerate(dialog):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', "
                             f"got {message!r}")
        if message["role"] not in ROLES:
            raise ValueError(f"message {i} has unknown role {message['role']!r}; "
                             f"roles are {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise TypeError(f"message {i} content must be a str, got "
                            f"{type(message['content']).__name__}")
        for tag in SPECIAL_TAGS:
            if tag in message["content"]:
                raise ValueError(f"message {i} ({message['role']}) contains the special tag "
                                 f"{tag!r}, which is not allowed inside a message")
    first = 1 if dialog[0]["role"] == "system" else 0
    if first == len(dialog):
        raise ValueError("the dialog has only a system message; it needs a user message after it")
    for i in range(first, len(dialog)):
        expected = "user" if (i - first) % 2 == 0 else "assistant"
        if dialog[i]["role"] != expected:
            raise ValueError(f"message {i} has role {dialog[i]['role']!r} where {expected!r} "
                             f"was expected ({_SHAPE})")
    if last != "any" and dialog[-1]["role"] != last:
        raise ValueError(f"the last message (message {len(dialog) - 1}) has role "
                         f"{dialog[-1]['role']!r}; it must be {last!r}")


def format_dialog(dialog: Sequence[Message], *, last: str = "user") -> list[Turn]:
    """The dialog as Meta's turns: system folded into the first user message, then one Turn per
    (user, assistant) pair, and a final open Turn when the dialog ends with a user message."""
    check_dialog(dialog, last=last)
    messages = [dict(m) for m in dialog]
    if messages[0]["role"] == "system":
        # Meta strips the folded content as a whole, not the system message on its own.
        messages = [{"role": "user", "content": B_SYS + messages[0]["content"] + E_SYS
                     + messages[1]["content"]}] + messages[2:]
    turns = []
    for i in range(0, len(messages), 2):
        prompt = f"{B_INST} {messages[i]['content'].strip()} {E_INST}"
        answer = messages[i + 1]["content"].strip() if i + 1 < len(messages) else None
        turns.append(Turn(prompt, answer))
    return turns


def encode_dialog(tokenizer: _Encoder, dialog: Sequence[Message]) -> list[int]:
    """Token ids of a dialog ending with a user message, ready for the model to answer,
    exactly as Meta's `chat_completion` builds them."""
    ids: list[int] = []
    for turn in format_dialog(dialog, last="user"):
        ids += tokenizer.encode(turn.text, bos=True, eos=turn.answer is not None)
    return ids


def encode_dialog_with_answer(tokenizer: _Encoder, dialog: Sequence[Message]
                              ) -> tuple[list[int], list[bool]]:
    """Token ids of a dialog (ending with either role) and, per token, True where it belongs
    to an assistant answer: the answer's tokens and the EOS that closes it (the model must
    learn to stop). BOS and the `[INST] ... [/INST]` prompts are False.

    The ids are exactly Meta's: each completed turn is still encoded as one string. The split
    point is found by encoding the prompt alone; SentencePiece never merges across the space
    after `[/INST]`, so the prompt's ids are a prefix of the turn's ids (checked)."""
    ids: list[int] = []
    is_answer: list[bool] = []
    for turn in format_dialog(dialog, last="any"):
        if turn.answer is None:
            prompt_ids = tokenizer.encode(turn.prompt, bos=True, eos=False)
            ids += prompt_ids
            is_answer += [False] * len(prompt_ids)
            continue
        turn_ids = tokenizer.encode(turn.text, bos=True, eos=True)
        prompt_ids = tokenizer.encode(turn.prompt, bos=True, eos=False)
        if turn_ids[:len(prompt_ids)] != prompt_ids:
            raise RuntimeError(f"this tokenizer merges tokens across the end of {E_INST!r} in "
                               f"{turn.text!r}; the prompt/answer split is undefined")
        ids += turn_ids
        is_answer += [False] * len(prompt_ids) + [True] * (len(turn_ids) - len(prompt_ids))
    return ids, is_answer
