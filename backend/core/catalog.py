"""Names, one-line descriptions and capabilities of strategies, models and datasets.

Torch-free on purpose: configs are validated and the catalog is served from here without
importing torch. The implementations (the math package, which imports nothing of the
product) declare the same facts as behaviour; tests/unit/test_catalog.py checks they agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capabilities:
    """What a strategy does with the LoRA factors, as its implementation declares it."""

    trains: tuple[str, ...] = ("A", "B")  # factors the clients train
    uploads: tuple[str, ...] = ("A", "B")  # factors the clients send
    changes_backbone: bool = False  # merges (part of) the update into W
    reinit_lora: bool = False  # clients start every round from a fresh LoRA
    personalised: bool = False  # no single global model: evaluated per client
    heterogeneous_ranks: bool = False  # clients may train different LoRA ranks


STRATEGIES: dict[str, str] = {
    "fedmomentum": "SVD of the exact update: top r becomes the next LoRA, the residual goes into W (exact).",
    "fedit": "Average A and B separately (inexact: the mean of products is not the product of means).",
    "ffa": "A frozen at a shared seed; clients train and send B only (exact, less expressive).",
    "flora": "Stack all client factors, merge the exact update into W, fresh LoRA every round.",
    "flexlora": "SVD of the exact update truncated to each client's rank; the tail is dropped.",
    "fedex": "FedIT's averages plus the exact residual merged into W (exact).",
    "fedsa": "Share A only (averaged); every client keeps its own B (personalised).",
}

CAPABILITIES: dict[str, Capabilities] = {
    "fedmomentum": Capabilities(changes_backbone=True, heterogeneous_ranks=True),
    "fedit": Capabilities(),
    "ffa": Capabilities(trains=("B",), uploads=("B",)),
    "flora": Capabilities(changes_backbone=True, reinit_lora=True, heterogeneous_ranks=True),
    "flexlora": Capabilities(heterogeneous_ranks=True),
    "fedex": Capabilities(changes_backbone=True),
    "fedsa": Capabilities(uploads=("A",), personalised=True),
}

MODELS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct: pretrained Llama-architecture LM, 30 layers, d=576 (offline).",
    "tiny-llama": "Tiny random Llama (2 layers, d=64) with a byte-level tokenizer, for fast tests.",
    "minilm-l6": "all-MiniLM-L6-v2: pretrained BERT encoder (6 layers, d=384) + classifier head (offline).",
}

DATASETS: dict[str, str] = {
    "wordnet-topics": "WordNet gloss -> topic category (Debian wordnet-base); metric: accuracy.",
    "arith": "Generated GSM8K-style arithmetic word problems; metric: exact match of the number.",
    "chatterbot": "chatterbot-corpus Q/A pairs with their topic; metric: answer contained.",
}

PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "shards")
