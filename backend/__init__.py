"""FedMomentum backend: settings, API, database, dispatch, CLI. Imports no torch."""
