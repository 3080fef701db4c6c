"""FedMomentum workers: all torch code (math, training, Celery tasks)."""
