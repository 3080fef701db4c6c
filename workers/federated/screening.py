"""Screening of client uploads before aggregation: a malformed, non-finite or outsized update
is excluded with the reason instead of poisoning the global model (Flower's habit: a bad
client is data, not an exception that kills the round).

An upload is the named tensors a client sends (PEFT keys of the factors its strategy uploads,
plus any fully trained head); its start is the same tensors as the server broadcast them for
the client's rank group. The update is upload - start. The norm rule's ratio is the
experiment's ``aggregation.max_norm_ratio`` (backend/config.py says why its default is 10).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Screening:
    """Which uploads may be aggregated, and why the others may not."""

    kept: list[str]  # client ids, in input order
    excluded: dict[str, str]  # client id -> reason
    norms: dict[str, float]  # ||upload - start|| of every well-formed, finite upload


def check_upload(upload: Mapping[str, Tensor], start: Mapping[str, Tensor]) -> str | None:
    """Why an upload cannot be aggregated (tensors missing or extra, another dtype or shape,
    NaN or inf), or None when it can."""
    missing, extra = sorted(start.keys() - upload.keys()), sorted(upload.keys() - start.keys())
    if missing:
        return _first("missing tensor", missing)
    if extra:
        return _first("unexpected tensor", extra)
    for name in sorted(start):
        got, want = upload[name], start[name]
        if got.dtype != want.dtype:
            return f"{name}: dtype {got.dtype}, expected {want.dtype}"
        if got.shape != want.shape:
            return f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        if not bool(torch.isfinite(got).all()):
            return f"{name}: NaN or inf values"
    return None


def _first(what: str, names: list[str]) -> str:
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return f"{what} {names[0]!r}{more}"


def update_norm(upload: Mapping[str, Tensor], start: Mapping[str, Tensor]) -> float:
    """||upload - start||_F over all tensors (float64: a float32 square cannot overflow it)."""
    total = sum(float(((upload[k].double() - start[k].double()) ** 2).sum()) for k in start)
    return math.sqrt(total)


def lower_median(values: list[float]) -> float:
    """The lower of the two middle values: always one of ``values``."""
    return sorted(values)[(len(values) - 1) // 2]


def screen_updates(
    uploads: Mapping[str, Mapping[str, Tensor]],
    starts: Mapping[str, Mapping[str, Tensor]],
    max_norm_ratio: float | None,
) -> Screening:
    """Screen one round's uploads (client id -> tensors) against each client's start.

    Malformed or non-finite uploads are excluded first; of the rest, an update whose norm
    exceeds ``max_norm_ratio`` x the lower median of their norms (None: no norm rule).
    The lower median is one of the honest norms as long as at most half of the uploads are
    outsized: with two clients, the mean of the middle two would be half the outlier itself.
    """
    if max_norm_ratio is not None and not max_norm_ratio > 1:
        raise ValueError(f"max_norm_ratio: must be > 1 or None, got {max_norm_ratio}")
    excluded: dict[str, str] = {}
    norms: dict[str, float] = {}
    for client, upload in uploads.items():
        reason = check_upload(upload, starts[client])
        if reason is None:
            norms[client] = update_norm(upload, starts[client])
        else:
            excluded[client] = reason
    if max_norm_ratio is not None and norms:
        median = lower_median(list(norms.values()))
        for client, norm in norms.items():
            if norm > max_norm_ratio * median:
                excluded[client] = (
                    f"update norm {norm:.3g} is more than {max_norm_ratio:g} x the round's "
                    f"median {median:.3g}"
                )
    kept = [c for c in uploads if c not in excluded]
    return Screening(kept=kept, excluded=excluded, norms=norms)
