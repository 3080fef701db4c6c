"""Whether the Hugging Face Hub can be reached, asked before any hub look-up so that an
offline machine fails at once instead of after the hub clients' minutes of retries."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

_TRUE = {"1", "true", "yes", "on"}


def hub_reachable(*offline_vars: str) -> bool:
    """False when HF_HUB_OFFLINE (or one of ``offline_vars``) is set, or the hub's host does
    not answer on port 443 within 3 s."""
    for var in ("HF_HUB_OFFLINE", *offline_vars):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), timeout=3).close()
    except OSError:
        return False
    return True
