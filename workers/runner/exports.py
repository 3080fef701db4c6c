"""Exporting a run: the merged model, the PEFT adapter with the merged backbone delta and a
README (export_readme.md, package data), and optionally one plain adapter of a fixed rank."""

from __future__ import annotations

import math
from importlib.resources import files
from pathlib import Path

import torch

from backend.core.config import ExperimentConfig
from backend.core.runs import RunPaths
from workers import peft_glue
from workers.artifacts import save_tensors
from workers.federated import LoraFactors
from workers.runner.bench import Bench, bench_for, load_state_into
from workers.runner.state import factors, load_run_config, read_group


def export(paths: RunPaths, rank_approx: int | None = None) -> dict[str, object]:
    """Write export/: merged model, PEFT adapter + backbone delta + README, rank-q adapter."""
    cfg = load_run_config(paths)
    final = paths.latest_state()
    rank = max(cfg.rank_groups())
    bench = bench_for(cfg, rank)
    adapter, backbone = read_group(paths, final, rank)
    info: dict[str, object] = {"round": final, "rank_group": rank}
    readme = files(__package__).joinpath("export_readme.md").read_text()
    with paths.store.commit_dir(paths.export) as out:  # a local scratch folder
        load_state_into(bench, adapter, backbone)
        peft_glue.save_adapter(bench.model, out.local_path("adapter"))
        deltas = peft_glue.weight_names(bench.model, backbone or {})
        save_tensors(out, "adapter/backbone_delta.safetensors", deltas)
        out.write_text("adapter/README.md", readme.format(model=cfg.model, n=len(deltas)))
        merged = peft_glue.merged_model(bench.model)
        merged.save_pretrained(out.local_path("merged"))
        bench.tokenizer.save_pretrained(out.local_path("merged"))
        if rank_approx:
            info["adapter_rank"] = _export_rank(
                bench, adapter, backbone or {}, cfg, rank_approx, out.local_path("adapter-rank")
            )
        out.write_json("export.json", info)
    return info


def _export_rank(
    bench: Bench,
    adapter: dict[str, torch.Tensor],
    backbone: dict[str, torch.Tensor],
    cfg: ExperimentConfig,
    q: int,
    out: Path,
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
    peft_glue.save_adapter_factors(bench.model, approx, out, rank=q)
    return {"rank": q, "relative_error": math.sqrt(err2 / total2) if total2 else 0.0}
