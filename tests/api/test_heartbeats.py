"""The last sign of life of the active experiments (what the watchdog of ``fedmomentum up``
reads), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from backend.core.config import ExperimentConfig
from backend.db.engine import get_engine, migrate
from backend.db.experiments import create_experiment
from backend.db.lifecycle import heartbeat, last_sign_of_life
from backend.db.models import Experiment


def _config(name: str) -> ExperimentConfig:
    data: dict[str, Any] = {"name": name, "model": "tiny-llama", "dataset": "arith"}
    return ExperimentConfig.model_validate(data)


def test_last_sign_of_life_is_the_newest_heartbeat_of_an_active_experiment(
    empty_database_url: str,
) -> None:
    migrate(empty_database_url)
    with Session(get_engine(empty_database_url)) as db:
        assert last_sign_of_life(db) is None  # nothing active: nothing to wait for

        old, new, done = (create_experiment(db, config=_config(n)) for n in "abc")
        hour_ago = datetime.now(UTC) - timedelta(hours=1)
        db.execute(update(Experiment).values(created_at=hour_ago - timedelta(hours=1)))
        db.execute(update(Experiment).where(Experiment.id == old.id).values(heartbeat_at=hour_ago))
        db.execute(update(Experiment).where(Experiment.id == done.id).values(status="completed"))
        db.commit()
        heartbeat(db, experiment_id=done.id)  # not active: does not count
        # ``new`` never beat: its creation counts (two hours ago)
        assert last_sign_of_life(db) == hour_ago

        heartbeat(db, experiment_id=new.id)
        last = last_sign_of_life(db)
        assert last is not None and last.tzinfo is not None
        assert abs((datetime.now(UTC) - last).total_seconds()) < 60
