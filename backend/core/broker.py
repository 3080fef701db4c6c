"""The Celery application's configuration, and sending tasks by name. Torch-free: the API
and the database layer send with it; only a worker process loads the task bodies (and torch).

Queues: ``train`` (one client's local training) and ``aggregate`` (prepare, aggregation and
evaluation, and Celery's own chord bookkeeping); in cross-silo mode also one queue per silo,
named after it, for the clients pinned to that silo (``send_round``).
Reliability settings:
- acks_late + reject_on_worker_lost: a task is acknowledged only when it has finished, so a
  worker that dies mid-task leaves it to be delivered again;
- prefetch 1: a worker never holds tasks another idle worker could run;
- visibility timeout above the hard time limit: Redis re-delivers an unacknowledged task only
  once no live worker can still be running it.
Kombu's filesystem transport removes a message when it is read, so after a crash of an
embedded worker the reconciler (backend.db.lifecycle.reconcile) re-dispatches instead.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import lru_cache

from celery import Celery, chord, group

from backend.core.config import AGGREGATE_QUEUE, TRAIN_QUEUE
from backend.core.settings import Settings

__all__ = [
    "AGGREGATE_QUEUE",
    "TRAIN_QUEUE",
    "celery_for",
    "make_app",
    "send_advance",
    "send_aggregate",
    "send_round",
]


def make_app(settings: Settings) -> Celery:
    """A Celery app for these settings (creates the embedded broker's folders)."""
    app = Celery("fedmomentum")
    transport: dict[str, object] = {}
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_dir.absolute()
        folder.mkdir(parents=True, exist_ok=True)
        transport = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(folder / "control"),  # default: ./control in the cwd
            "polling_interval": 0.01,  # default 1 s; each task hop waits for a poll
        }
    elif settings.broker_url.startswith(("redis://", "rediss://")):
        transport = {"visibility_timeout": settings.task_time_limit_s + 600}
        if settings.broker_key_prefix:
            transport["global_keyprefix"] = settings.broker_key_prefix
    backend = settings.celery_result_backend
    if backend.startswith("db+sqlite:///"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    app.conf.update(
        broker_url=settings.broker_url,
        # The filesystem broker with atomic message files (kombu's can hand out half a file).
        broker_transport=(
            "backend.core.fs_transport:Transport"
            if settings.broker_url.startswith("filesystem://")
            else None
        ),
        broker_transport_options=transport,
        result_backend=backend,
        result_backend_transport_options=(
            {"global_keyprefix": settings.broker_key_prefix} if settings.broker_key_prefix else {}
        ),
        result_expires=7 * 24 * 3600,
        # Chord bookkeeping for result backends without native chords (the embedded SQLite
        # one): poll every 0.02 s, and let countdowns fire that late at most (default 1 s).
        # Redis counts chord parts natively.
        result_chord_retry_interval=0.02,
        worker_timer_precision=0.02,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],  # never pickle: a pickled message could run code
        result_accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        task_default_queue=AGGREGATE_QUEUE,  # celery.chord_unlock goes here too
        task_routes={"fedmomentum.train_client": {"queue": TRAIN_QUEUE}},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


@lru_cache(maxsize=8)
def _app(key: str) -> Celery:
    return make_app(Settings.model_validate_json(key))


def celery_for(settings: Settings) -> Celery:
    """The Celery app of these settings (one per distinct settings, cached)."""
    return _app(settings.model_dump_json())


def send_advance(settings: Settings, experiment_id: str, generation: int) -> None:
    celery_for(settings).send_task(
        "fedmomentum.advance", args=(experiment_id, generation), queue=AGGREGATE_QUEUE
    )


def send_round(
    settings: Settings,
    experiment_id: str,
    round_num: int,
    generation: int,
    attempt: int,
    clients: list[int],
    silos: Mapping[int, str] | None = None,
    chorded: bool = True,
) -> None:
    """One round as a chord: ``train_client`` per client, then ``aggregate_round``.

    A client pinned to a silo (``silos``: client -> silo name) goes to the queue named after
    its silo, which only that silo's workers consume; every other client goes to ``train``.
    Not ``chorded`` (a round that also waits on token silos, whose clients train over the
    API): only the group; whoever records the round's last client sends ``send_aggregate``.
    """
    silos = silos or {}
    app = celery_for(settings)
    header = group(
        app.signature(
            "fedmomentum.train_client",
            args=(experiment_id, round_num, client, attempt, generation),
            kwargs={"sent_at": time.time()},  # the task reports how long it waited
            queue=silos.get(client, TRAIN_QUEUE),
        )
        for client in clients
    )
    if not chorded:
        if clients:
            header.apply_async()
        return
    callback = app.signature(
        "fedmomentum.aggregate_round",
        args=(experiment_id, round_num, attempt, generation),
        queue=AGGREGATE_QUEUE,
    )
    # chord.run, not apply_async: only run() takes the countdown of the first chord_unlock
    # poll (result backends without native chords, i.e. the embedded SQLite one), 0.02 s
    # instead of a fixed 1 s per round; later polls come every result_chord_retry_interval.
    # Redis counts chord parts natively and ignores both.
    chord(header, callback).run(header, callback, (), app=app, countdown=0.02)


def send_aggregate(
    settings: Settings, experiment_id: str, round_num: int, attempt: int, generation: int
) -> None:
    """``aggregate_round`` on its own (a round without a chord: its last client arrived)."""
    celery_for(settings).send_task(
        "fedmomentum.aggregate_round",
        args=([], experiment_id, round_num, attempt, generation),
        queue=AGGREGATE_QUEUE,
    )
