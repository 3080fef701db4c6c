"""Only safetensors and JSON (and safe YAML) are ever deserialised: a scan of the project's
Python sources for anything that can run code while loading data (pickle and its relatives,
torch.load without weights_only=True, numpy's allow_pickle, unsafe YAML loaders, remote
code, eval), and Celery accepting JSON messages only. The scan is checked on bad code too,
so it cannot pass by finding nothing."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from backend.core.broker import make_app
from backend.core.settings import Settings
from tests.helpers import REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("backend", "workers", "migrations", "benchmarks")  # every shipped Python source
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve",
                  "marshal", "jsonpickle"}  # fmt: skip
UNSAFE_CALLS = {
    "yaml.unsafe_load": "unsafe YAML loader",
    "yaml.unsafe_load_all": "unsafe YAML loader",
    "yaml.full_load": "YAML full loader (constructs Python objects)",
    "yaml.full_load_all": "YAML full loader (constructs Python objects)",
    "torch.jit.load": "TorchScript archives are pickles",
    "pandas.read_pickle": "pickle",
    "eval": "eval of a string",
    "exec": "exec of a string",
}
SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader", "yaml.BaseLoader"}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``np.load`` -> ``numpy.load`` through the file's imports; None if not a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _set_but_not(call: ast.Call, name: str, value: object) -> bool:
    """Keyword ``name`` is passed, as anything but the literal ``value``."""
    given = _keyword(call, name)
    return given is not None and not _is(given, value)


def unsafe_loading(source: str) -> list[str]:
    """'line N: what' for each construct in ``source`` that can run code while loading data."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[(a.asname or a.name).split(".")[0]] = (
                    a.name if a.asname else a.name.split(".")[0]
                )
                if a.name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"line {node.lineno}: imports {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            if node.module.split(".")[0] in UNSAFE_MODULES:
                found.append(f"line {node.lineno}: imports from {node.module}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases) or ""
        line = f"line {node.lineno}: {name or 'call'}"
        if name in UNSAFE_CALLS:
            found.append(f"{line}: {UNSAFE_CALLS[name]}")
        if name.endswith("read_pickle"):
            found.append(f"{line}: pickle")
        if name == "torch.load" and not _is(_keyword(node, "weights_only"), True):
            found.append(f"{line}: torch.load without weights_only=True")
        elif _set_but_not(node, "weights_only", True):  # e.g. from_pretrained(weights_only=...)
            found.append(f"{line}: weights_only is not True")
        if _set_but_not(node, "allow_pickle", False):
            found.append(f"{line}: allow_pickle")
        if _set_but_not(node, "trust_remote_code", False):
            found.append(f"{line}: trust_remote_code runs the checkpoint's code")
        if name in ("yaml.load", "yaml.load_all"):
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader, aliases) not in SAFE_YAML_LOADERS:
                found.append(f"{line}: YAML load without a safe Loader")
        if name.endswith(".from_pretrained") and not ("Tokenizer" in name or "Config" in name):
            # A model checkpoint: safetensors only (a .bin is a pickle), or the GGUF format.
            # (Configs and tokenizers are JSON and text files: nothing to unpickle.)
            safe = _is(_keyword(node, "use_safetensors"), True) or _keyword(node, "gguf_file")
            if not safe:
                found.append(f"{line}: from_pretrained without use_safetensors=True")
    return found


def sources() -> list[Path]:
    """The project's own Python files (not what is gitignored: a virtual environment that a
    benchmark created inside benchmarks/, caches)."""
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *SCANNED],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return sorted(ROOT / p for p in tracked if p.endswith(".py"))


def test_no_project_source_can_run_code_while_loading_data() -> None:
    files = sources()
    found = {
        str(p.relative_to(ROOT)): hits for p in files if (hits := unsafe_loading(p.read_text()))
    }

    assert len(files) > 50  # the scan saw the project
    assert found == {}


BAD = """
import pickle
import numpy as np
import yaml as y
from torch import load
import torch
from transformers import AutoModelForCausalLM
x = pickle.loads(b"")
torch.load("a.pt")
torch.load("a.pt", weights_only=False)
load("b.pt")
np.load("c.npy", allow_pickle=True)
y.load(open("d.yaml"))
y.load(open("d.yaml"), Loader=y.UnsafeLoader)
y.full_load("e")
AutoModelForCausalLM.from_pretrained("dir")
AutoModelForCausalLM.from_pretrained("dir", trust_remote_code=True, use_safetensors=True)
eval("1 + 1")
"""
GOOD = """
import json
import numpy as np
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
json.loads("{}")
torch.load("a.pt", weights_only=True)
np.load("c.npy")
yaml.safe_load("a: 1")
yaml.load("a: 1", Loader=yaml.SafeLoader)
AutoModelForCausalLM.from_pretrained("dir", use_safetensors=True)
AutoModelForCausalLM.from_pretrained("dir", gguf_file="m.gguf")
AutoTokenizer.from_pretrained("dir")
load_file("w.safetensors")
model.eval()
"""


def test_the_scan_finds_every_kind_of_unsafe_loading() -> None:
    found = unsafe_loading(BAD)

    model = "transformers.AutoModelForCausalLM.from_pretrained"
    assert found == [
        "line 2: imports pickle",
        "line 9: torch.load: torch.load without weights_only=True",
        "line 10: torch.load: torch.load without weights_only=True",
        "line 11: torch.load: torch.load without weights_only=True",  # `from torch import load`
        "line 12: numpy.load: allow_pickle",
        "line 13: yaml.load: YAML load without a safe Loader",
        "line 14: yaml.load: YAML load without a safe Loader",
        "line 15: yaml.full_load: YAML full loader (constructs Python objects)",
        f"line 16: {model}: from_pretrained without use_safetensors=True",
        f"line 17: {model}: trust_remote_code runs the checkpoint's code",
        "line 18: eval: eval of a string",
    ]
    assert unsafe_loading(GOOD) == []


@pytest.mark.parametrize("broker", ["filesystem://", REDIS_URL])
def test_celery_sends_and_accepts_json_only(broker: str, tmp_path: Path) -> None:
    app = make_app(Settings(broker_url=broker, data_dir=tmp_path))

    conf = app.conf
    assert (conf.task_serializer, conf.result_serializer, conf.event_serializer) == ("json",) * 3
    assert list(conf.accept_content) == ["json"]
    assert list(conf.result_accept_content) == ["json"]
