"""Evaluation on the held-out set: loss on answer tokens and task accuracy.

One teacher-forced pass gives the loss and, per example, whether greedy decoding would
reproduce the reference answer: greedy decoding emits the answer's tokens exactly when the
argmax at every answer position is the next answer token. For label tasks and classifiers
that is the accuracy, with no generation at all; tasks scored on free text (the final
number, a contained answer) generate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backend.core.data import Example, TaskData
from workers.training import Encoded, make_batch

OnBatch = Callable[[], None] | None  # called after every batch: a long evaluation shows progress


@torch.no_grad()
def score(
    model: nn.Module,
    data: Sequence[Encoded],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    on_batch: OnBatch = None,
) -> tuple[float, list[bool]]:
    """(mean cross-entropy per answer token or example, greedy-reproduces-answer per example).

    Batches are cut from the examples sorted by length, so little compute goes to padding.
    """
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
    total, count, hits = 0.0, 0, [False] * len(data)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = make_batch([data[i] for i in idx], pad_id, device)
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        if labels.ndim == 2:  # causal LM: position t predicts token t + 1
            logits, labels = logits[:, :-1], labels[:, 1:]
            answer = (labels != -100) & (labels != pad_id)  # the closing eos is not the answer
            right = ((logits.argmax(-1) == labels) | ~answer).all(dim=1)
        else:
            right = logits.argmax(-1) == labels
        for i, hit in zip(idx, right.tolist(), strict=True):
            hits[i] = hit
        flat = logits.reshape(-1, logits.shape[-1])
        ce = F.cross_entropy(flat, labels.reshape(-1), reduction="sum", ignore_index=-100)
        total += float(ce)
        count += int((labels != -100).sum())
        if on_batch is not None:
            on_batch()
    return total / max(1, count), hits


def eval_loss(
    model: nn.Module, data: Sequence[Encoded], batch_size: int, pad_id: int, device: torch.device
) -> float:
    """Mean cross-entropy per answer token (LMs) or per example (classifiers)."""
    return score(model, data, batch_size, pad_id, device)[0]


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
    on_batch: OnBatch = None,
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
        if on_batch is not None:
            on_batch()
    return texts


def evaluate_model(
    model: nn.Module,
    tokenizer,
    task: TaskData,
    examples: Sequence[Example],
    data: Sequence[Encoded],
    *,
    kind: str,
    batch_size: int,
    max_new_tokens: int | None,
    device: torch.device,
    on_batch: OnBatch = None,
) -> dict[str, float]:
    """eval_loss and accuracy of a model on the encoded held-out examples."""
    loss, hits = score(model, data, batch_size, tokenizer.pad_token_id, device, on_batch)
    if kind != "seq-cls" and task.scoring != "label":
        budget = max_new_tokens or answer_budget(data)
        answers = generate_answers(model, tokenizer, data, batch_size, budget, device, on_batch)
        hits = [task.is_correct(ex, text) for ex, text in zip(examples, answers, strict=True)]
    return {"eval_loss": loss, "accuracy": sum(hits) / len(hits)}


def answer_budget(data: Sequence[Encoded]) -> int:
    """Default max_new_tokens: the longest answer in tokens, plus 2."""
    return 2 + max(sum(1 for label in it["labels"] if label != -100) for it in data)
