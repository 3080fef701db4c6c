"""The torch-free catalog names exactly what the implementations provide."""

from __future__ import annotations

import subprocess
import sys

from backend.core import catalog
from backend.core.data import DATASETS
from workers.federated import STRATEGIES
from workers.models import BUILTIN_MODELS


def test_catalog_matches_the_implementations():
    assert set(catalog.STRATEGIES) == set(STRATEGIES)
    assert set(catalog.MODELS) == set(BUILTIN_MODELS)
    assert DATASETS is catalog.DATASETS
    assert all(BUILTIN_MODELS[n].description == d for n, d in catalog.MODELS.items())


def test_capabilities_are_what_the_strategies_do():
    assert set(catalog.CAPABILITIES) == set(STRATEGIES)
    for name, declared in catalog.CAPABILITIES.items():
        impl = STRATEGIES[name]
        actual = catalog.Capabilities(
            trains=tuple(impl.trains),
            uploads=tuple(impl.uploads),
            changes_backbone=impl.changes_backbone,
            reinit_lora=impl.reinit_lora,
            personalised=impl.personalised,
            heterogeneous_ranks=impl.heterogeneous_ranks,
        )
        assert actual == declared, name


def test_backend_config_and_catalog_import_no_torch():
    code = (
        "import sys, backend.core.config, backend.cli, backend.core.catalog;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
