"""The Celery application, configured from Settings. Torch-free: the API imports it to send
tasks by name; only the worker imports ``workers.tasks`` (and torch, on the first task).

Queues: ``train`` (one client's local training) and ``aggregate`` (prepare, aggregation and
evaluation, and Celery's own chord bookkeeping); in cross-silo mode also one queue per silo,
named after it, for the clients pinned to that silo (workers.dispatch.send_round).
Reliability settings:
- acks_late + reject_on_worker_lost: a task is acknowledged only when it has finished, so a
  worker that dies mid-task leaves it to be delivered again;
- prefetch 1: a worker never holds tasks another idle worker could run;
- visibility timeout above the hard time limit: Redis re-delivers an unacknowledged task only
  once no live worker can still be running it.
Kombu's filesystem transport removes a message when it is read, so after a crash of an
embedded worker the reconciler (workers.dispatch.reconcile) re-dispatches instead.
"""

from __future__ import annotations

from celery import Celery

from backend.config import AGGREGATE_QUEUE, TRAIN_QUEUE
from backend.settings import Settings, get_settings

__all__ = ["AGGREGATE_QUEUE", "TRAIN_QUEUE", "app", "make_app"]


def make_app(settings: Settings) -> Celery:
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
            "workers.fs_transport:Transport"
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


app = make_app(get_settings())
