"""Local training of one client: AdamW, linear warmup then linear decay, gradient clipping,
optionally under bf16 autocast (``training.precision``).

The loss is the model's own: causal LMs get labels of -100 on prompt tokens (the loss is on
the response only), classifiers get class indices.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
from torch import nn

from backend.core.config import TrainingConfig
from backend.core.data import Example
from workers.encoding import collate, tokenize_example, uses_chat_template

Encoded = dict[str, list[int]]


def encode(
    examples: Sequence[Example],
    tokenizer,
    max_length: int,
    kind: str,
    labels: Sequence[str],
    *,
    chat_template: str = "auto",
) -> list[Encoded]:
    """Token ids per example: instruction format for LMs (through the chat template as
    ``chat_template`` says: data.chat_template), text + class index for classifiers."""
    if kind == "seq-cls":
        index = {label: i for i, label in enumerate(labels)}
        out = []
        for ex in examples:
            enc = tokenizer(ex.prompt, truncation=True, max_length=max_length)
            out.append(
                {
                    **{k: list(enc[k]) for k in ("input_ids", "attention_mask")},
                    "label": [index[ex.label]],
                }
            )
        return out
    chat = uses_chat_template(tokenizer, chat_template)
    return [tokenize_example(ex, tokenizer, max_length, chat=chat) for ex in examples]


def make_batch(
    items: Sequence[Encoded], pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Right-padded tensors on the device; classifiers get ``labels`` of shape (batch,)."""
    if "label" in items[0]:
        labels = torch.tensor([it["label"][0] for it in items])
        batch = collate(
            [{k: it[k] for k in ("input_ids", "attention_mask")} for it in items], pad_id
        )
        batch["labels"] = labels
    else:
        batch = collate(list(items), pad_id)
    return {k: v.to(device) for k, v in batch.items()}


def step_count(n_examples: int, cfg: TrainingConfig) -> int:
    """Optimizer steps of one local run: local_epochs when set, local_steps otherwise."""
    if cfg.local_epochs is not None:
        return max(1, math.ceil(n_examples * cfg.local_epochs / cfg.batch_size))
    return cfg.local_steps


def batch_order(n_examples: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Indices of each step's batch: reshuffled epochs, cut into batches, seeded."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        epoch = list(range(n_examples))
        rng.shuffle(epoch)
        order.extend(epoch)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then linear decay to 0 at the end of the local run."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def train_local(
    model: nn.Module,
    data: Sequence[Encoded],
    cfg: TrainingConfig,
    *,
    seed: int,
    pad_id: int,
    device: torch.device,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train the trainable parameters in place; returns the loss of every step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = step_count(len(data), cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps, steps))
    torch.manual_seed(seed)  # LoRA dropout masks
    model.train()
    losses = []
    # bf16: autocast runs the matmuls in bfloat16; parameters and optimizer stay float32.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    for step, idx in enumerate(batch_order(len(data), steps, cfg.batch_size, seed)):
        with autocast:
            loss = model(**make_batch([data[i] for i in idx], pad_id, device)).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"local training diverged at step {step}: loss={loss.item()}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses
