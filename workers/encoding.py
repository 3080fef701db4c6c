"""Instruction-format tokenization (loss on response tokens only) and right-padded batches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from backend.core.data.task import Example

if TYPE_CHECKING:  # torch is imported when a batch is made
    import torch

IGNORE_INDEX = -100  # positions the cross-entropy loss skips
_PAD_VALUES = {"attention_mask": 0, "labels": IGNORE_INDEX}


def uses_chat_template(tokenizer: Any, setting: str = "auto") -> bool:
    """Whether prompts go through the tokenizer's chat template: "auto" when it has one."""
    if setting not in ("auto", "off"):
        raise ValueError(f"data.chat_template: unknown {setting!r}; allowed: auto, off")
    return setting == "auto" and bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(ex: Example, tokenizer: Any, chat: bool) -> list[int]:
    """The prompt's token ids: the conversation through the chat template, ending where the
    assistant's reply starts, or the plain prompt text."""
    if chat:
        turns = ex.messages or (("user", ex.prompt),)
        messages = [{"role": role, "content": content} for role, content in turns]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The template writes its own special tokens (bos, turn markers).
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(ex.prompt)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and ids and ids[-1] == eos:  # some tokenizers append eos to text
        ids.pop()
    return ids


def tokenize_example(
    ex: Example, tokenizer: Any, max_length: int, *, chat: bool = False
) -> dict[str, list[int]]:
    """Prompt then response (+ eos) token ids; labels are -100 on the prompt.

    With ``chat`` the prompt goes through the tokenizer's chat template and the response
    loses its leading whitespace (the template already starts the assistant's turn); eos
    closes the turn, as the instruct models' eos is their end-of-turn token.

    Over max_length, the prompt keeps at least half the budget (cut from the left, so the
    text nearest the answer stays) and the response is cut from the right; at least one
    response token always remains.
    """
    if max_length < 2:
        raise ValueError(f"max_length: must be >= 2 (got {max_length})")
    eos = tokenizer.eos_token_id
    prompt = prompt_ids(ex, tokenizer, chat)
    text = ex.response.lstrip() if chat else ex.response
    response = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if eos is not None:
        response.append(eos)
    if not response:
        raise ValueError(f"response: empty after tokenization ({ex.response!r})")
    if len(prompt) + len(response) > max_length:
        keep = min(len(prompt), max(max_length - len(response), max_length // 2))
        prompt, response = prompt[len(prompt) - keep :], response[: max_length - keep]
    ids = prompt + response
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": [IGNORE_INDEX] * len(prompt) + response,
    }


def collate(batch: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad every field to the longest item: pad_id, mask 0, labels -100."""
    import torch

    out = {}
    for key in batch[0]:
        width = max(len(item[key]) for item in batch)
        fill = _PAD_VALUES.get(key, pad_id)
        rows = [item[key] + [fill] * (width - len(item[key])) for item in batch]
        out[key] = torch.tensor(rows, dtype=torch.long)
    return out
