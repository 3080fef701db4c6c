"""The database layer, split by what it stores: experiments, metrics, results (rounds, client
attempts, clients, artifacts), events (the one writer of event rows) and an experiment's
lifecycle (status, dispatch, reconcile). Keyword-only functions, no HTTP types; it imports
only the shared layer (backend.core). The schema is created only by the Alembic migrations.
"""
