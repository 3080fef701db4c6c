"""Pure federated-LoRA math: factors, exact SVD, the seven strategies, diagnostics, the
screening of client uploads, and differential privacy (``privacy``: clipping and noise).

No I/O, no Celery, no database: everything here is a function of tensors.
"""

from .aggregate import RoundAggregate, aggregate_round, client_weights, initial_states
from .diagnostics import ENERGY_LEVELS, LayerDiagnostics, kept_energy, rank_for_energy
from .lora import (
    Delta,
    LoraFactors,
    LowRank,
    from_peft_state_dict,
    lora_scaling,
    merge_delta,
    to_dense,
    to_peft_state_dict,
)
from .screening import Screening, screen_updates
from .strategies import (
    STRATEGIES,
    AggregationOptions,
    ClientUpdate,
    LayerRound,
    LayerState,
    Strategy,
    exact_update,
    get_strategy,
)
from .svd import FACTOR_SPLITS, FRESH_A_ROW_NORM, SVD_METHODS, exact_svd

__all__ = [
    "ENERGY_LEVELS",
    "FACTOR_SPLITS",
    "FRESH_A_ROW_NORM",
    "STRATEGIES",
    "SVD_METHODS",
    "AggregationOptions",
    "ClientUpdate",
    "Delta",
    "LayerDiagnostics",
    "LayerRound",
    "LayerState",
    "LoraFactors",
    "LowRank",
    "RoundAggregate",
    "Screening",
    "Strategy",
    "aggregate_round",
    "client_weights",
    "exact_svd",
    "exact_update",
    "from_peft_state_dict",
    "get_strategy",
    "initial_states",
    "kept_energy",
    "lora_scaling",
    "merge_delta",
    "rank_for_energy",
    "screen_updates",
    "to_dense",
    "to_peft_state_dict",
]
