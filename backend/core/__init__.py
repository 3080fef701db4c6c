"""The torch-free shared layer: what the API and the workers both need and neither owns.

The experiment config schema and queue names (config), the catalog of strategies, models and
datasets with each strategy's capabilities (catalog), Settings (settings), the artifact store
(store), the run-directory layout (runs), the dataset builders the API checks configs with
(data, checks), and the Celery configuration with sending tasks by name (broker,
fs_transport). It imports neither the database layer, the API, nor the workers.
"""
