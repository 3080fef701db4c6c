"""Sending work to the workers, and the reconciler. Torch-free (the API uses it).

Every dispatch of an experiment claims a new *generation* in the database and sends
``advance``, which works out from the run directory and the database where the experiment
stands (prepare, finish an aggregated round, train the unfinished round, or export). Tasks
carry their generation and do nothing once it is outdated, so re-dispatching is always safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from functools import lru_cache

from celery import Celery, chord, group
from sqlalchemy.orm import Session

from backend import progress
from backend.db import get_engine
from backend.models import Experiment
from backend.settings import Settings
from workers.celery_app import AGGREGATE_QUEUE, TRAIN_QUEUE, make_app

log = logging.getLogger(__name__)


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
) -> None:
    """One round as a chord: ``train_client`` per client, then ``aggregate_round``.

    A client pinned to a silo (``silos``: client -> silo name) goes to the queue named after
    its silo, which only that silo's workers consume; every other client goes to ``train``.
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


def dispatch(settings: Settings, session: Session, experiment: Experiment) -> int | None:
    """Claim a new generation for an active experiment and send ``advance``.

    Returns the generation, or None when another process dispatched it at the same moment.
    """
    generation = progress.claim_dispatch(session, experiment)
    if generation is not None:
        send_advance(settings, experiment.id, generation)
    return generation


def reconcile(settings: Settings, *, everything: bool = False) -> list[str]:
    """Re-dispatch active experiments that show no sign of life (``everything``: all active
    ones, for a start where no worker can be running). Returns the ids re-dispatched."""
    stale_after = None if everything else settings.stale_after_s
    done = []
    with Session(get_engine(settings.database_url)) as session:
        for exp in progress.stale_experiments(session, stale_after_s=stale_after):
            try:
                if dispatch(settings, session, exp) is not None:
                    done.append(exp.id)
            except Exception:  # noqa: BLE001 - the broker may be down: try again next time
                log.exception("reconcile: could not dispatch experiment %s", exp.id)
    if done:
        log.info("reconcile: re-dispatched %s", ", ".join(done))
    return done
