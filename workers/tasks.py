"""Celery tasks: thin wrappers around workers.service. Start a worker with
``fedmomentum worker`` (or ``celery -A workers.tasks worker -Q train,aggregate``). Tasks are
sent by name (backend.core.broker), so nothing else imports this module.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.signals import worker_process_init, worker_ready

from backend.core.broker import make_app
from backend.core.settings import get_settings

__all__ = ["app", "advance", "train_client", "aggregate_round"]
log = logging.getLogger(__name__)

# The worker's app: a worker process reads its settings once, at start.
app = make_app(get_settings())


def _setup(**_: Any) -> None:
    settings = get_settings()
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)


worker_ready.connect(_setup)  # solo pool: tasks run in the main process
worker_process_init.connect(_setup)  # prefork: in each child


@app.task(name="fedmomentum.advance", ignore_result=True)
def advance(experiment_id: str, generation: int) -> str:
    """Prepare, evaluate the initial model, then start (or resume) the next round."""
    from workers import service

    return service.advance(get_settings(), experiment_id, generation)


@app.task(name="fedmomentum.train_client", bind=True)
def train_client(
    self: Task,
    experiment_id: str,
    round_num: int,
    client: int,
    attempt: int,
    generation: int,
    sent_at: float | None = None,
) -> dict[str, Any]:
    """Train one client. Never raises: a raising chord member would stall the round."""
    from workers import service

    waited = None if sent_at is None else max(0.0, time.time() - sent_at)
    try:
        return service.train(
            get_settings(), experiment_id, round_num, client, attempt, generation, waited,
            worker=self.request.hostname,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the aggregate step sees the missing result
        log.exception("train_client %s round %s client %s", experiment_id, round_num, client)
        return {"client": client, "ok": False, "error": f"{type(e).__name__}: {e}"}


@app.task(name="fedmomentum.aggregate_round", ignore_result=True)
def aggregate_round(
    _results: list[dict[str, Any]],
    experiment_id: str,
    round_num: int,
    attempt: int,
    generation: int,
) -> str:
    """The chord's callback: aggregate, evaluate, enqueue the next round (or retry, or fail).

    The clients' records are read from the database, not from ``_results``: a re-dispatched
    round may mix attempts.
    """
    from workers import service

    return service.aggregate(get_settings(), experiment_id, round_num, attempt, generation)
