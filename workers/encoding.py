"""Instruction-format tokenization (loss on response tokens only) and right-padded batches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from backend.core.data.task import Example

if TYPE_CHECKING:  # torch is imported when a batch is made
    import torch

IGNORE_INDEX = -100  # positions the cross-entropy loss skips
_PAD_VALUES = {"attention_mask": 0, "labels": IGNORE_INDEX}


def tokenize_example(ex: Example, tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """Prompt then response (+ eos) token ids; labels are -100 on the prompt.

    Over max_length, the prompt keeps at least half the budget (cut from the left, so the
    text nearest the answer stays) and the response is cut from the right; at least one
    response token always remains.
    """
    if max_length < 2:
        raise ValueError(f"max_length: must be >= 2 (got {max_length})")
    eos = tokenizer.eos_token_id
    prompt = list(tokenizer(ex.prompt)["input_ids"])
    if eos is not None and prompt and prompt[-1] == eos:  # some tokenizers append eos to text
        prompt.pop()
    response = list(tokenizer(ex.response, add_special_tokens=False)["input_ids"])
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
