"""The header of a safetensors file, read without torch: what an uploaded update claims to
hold (names, dtypes, shapes, metadata), checked against the file's own size. The values
themselves (NaN, wrong shapes against the global adapter, outlier norms) are screened where
every upload is, when the round aggregates."""

from __future__ import annotations

import json
import math
from typing import IO, Any

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
            "U8": 1, "BOOL": 1}  # fmt: skip
MAX_HEADER = 100 << 20  # safetensors' own limit


def read_header(file: IO[bytes], size: int) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(metadata, tensor name -> {dtype, shape, data_offsets}) of a safetensors file of
    ``size`` bytes; ValueError saying what is wrong with it."""
    if size < 8:
        raise ValueError(f"not a safetensors file: {size} bytes")
    n = int.from_bytes(file.read(8), "little")
    if n > min(size - 8, MAX_HEADER):
        raise ValueError(f"not a safetensors file: a header of {n} bytes in {size}")
    try:
        header = json.loads(file.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a safetensors file: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file: its header is not a mapping")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("safetensors __metadata__: expected a mapping of strings")
    data = size - 8 - n
    for name, info in header.items():
        _check_tensor(name, info, data)
    return meta, header


def _check_tensor(name: str, info: Any, data: int) -> None:
    bad = ValueError(f"tensor {name!r}: a bad header entry {info!r}")
    if not isinstance(info, dict) or info.get("dtype") not in ITEMSIZE:
        raise bad
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise bad
    if not (isinstance(offsets, list) and len(offsets) == 2):
        raise bad
    start, end = offsets
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
        raise bad
    if end > data:
        raise ValueError(
            f"tensor {name!r}: data_offsets {offsets} beyond the file's {data} data bytes "
            "(a truncated file?)"
        )
    if math.prod(shape) * ITEMSIZE[info["dtype"]] != end - start:
        raise ValueError(f"tensor {name!r}: shape {shape} does not match its {offsets} bytes")
