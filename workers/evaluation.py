"""Evaluation of a model on the held-out set: loss on answer tokens and task accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers.data import Example, TaskData
from workers.training import Encoded, make_batch


@torch.no_grad()
def eval_loss(
    model: nn.Module, data: Sequence[Encoded], batch_size: int, pad_id: int, device: torch.device
) -> float:
    """Mean cross-entropy per answer token (LMs) or per example (classifiers)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        batch = make_batch(data[i : i + batch_size], pad_id, device)
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        if labels.ndim == 2:  # causal LM: position t predicts token t + 1
            logits, labels = logits[:, :-1], labels[:, 1:]
        total += float(
            F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                reduction="sum",
                ignore_index=-100,
            )
        )
        count += int((labels != -100).sum())
    return total / max(1, count)


def _prompt_ids(item: Encoded) -> list[int]:
    """The prompt part of an encoded LM example (where the labels are masked)."""
    n = next(i for i, label in enumerate(item["labels"]) if label != -100)
    return item["input_ids"][:n]


@torch.no_grad()
def generate_answers(
    model: nn.Module,
    tokenizer,
    data: Sequence[Encoded],
    batch_size: int,
    max_new_tokens: int,
    device: torch.device,
) -> list[str]:
    """Greedy continuations of each prompt (left-padded batches)."""
    model.eval()
    pad = tokenizer.pad_token_id
    texts = []
    for i in range(0, len(data), batch_size):
        prompts = [_prompt_ids(it) for it in data[i : i + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return texts


@torch.no_grad()
def accuracy(
    model: nn.Module,
    tokenizer,
    task: TaskData,
    examples: Sequence[Example],
    data: Sequence[Encoded],
    *,
    kind: str,
    batch_size: int,
    max_new_tokens: int,
    device: torch.device,
) -> float:
    """Share of held-out examples answered correctly (argmax class, or generated answer)."""
    if kind == "seq-cls":
        hits = 0
        for i in range(0, len(data), batch_size):
            batch = make_batch(data[i : i + batch_size], tokenizer.pad_token_id, device)
            labels = batch.pop("labels")
            hits += int((model(**batch).logits.argmax(-1) == labels).sum())
        return hits / len(data)
    answers = generate_answers(model, tokenizer, data, batch_size, max_new_tokens, device)
    return sum(task.is_correct(ex, text) for ex, text in zip(examples, answers, strict=True)) / len(
        examples
    )


def answer_budget(data: Sequence[Encoded]) -> int:
    """Default max_new_tokens: the longest answer in tokens, plus 2."""
    return 2 + max(sum(1 for label in it["labels"] if label != -100) for it in data)
