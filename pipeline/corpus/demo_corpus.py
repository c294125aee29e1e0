"""The built-in synthetic demo corpus: acted-emotion-like speech made from a seed, with no download.

``generate_demo_corpus(out_dir)`` writes an IEMOCAP-shaped corpus (5 sessions, one female and one male speaker
each, 4 classes ``neu hap ang sad``, transcripts) so that every pipeline stage and fold plan runs end to end on a
fresh machine. It is a test bed, not a benchmark: its numbers are never compared with the papers'.

Signal model (a small Klatt-style source-filter synthesiser, numpy/scipy only):

* text -> letter-based phones (vowels, fricatives, stops, nasals, approximants) grouped into syllables;
* source: Rosenberg glottal pulses on an F0 contour (phrase declination, pitch accents on stressed syllables,
  slow wander, final fall/rise), per-cycle jitter and shimmer, pulsed aspiration noise (breathiness), and a
  one-pole spectral tilt;
* filter: a cascade of 4 formant resonators per phone, cross-faded between phones (time-varying formants);
* fricative/burst noise through band-pass filters; per-session channel colour and background noise floor.

Emotions act on the parameters the way acted emotions do (F0 level/range, speaking rate, loudness, voice
quality, jitter), scaled by a per-speaker expressiveness and a per-utterance intensity, with per-utterance noise on
every parameter, so classes overlap. A random recording gain per utterance and per session keeps loudness alone
from identifying the class. Transcripts carry part of the signal: most utterances use emotion-neutral sentences.

Determinism: every utterance is drawn from its own ``numpy.random.default_rng([seed, stream, index])``, so the
output does not depend on ``jobs`` or thread counts; filters are scipy ``lfilter``/``sosfilt`` (sequential C
loops, no BLAS) and the waveform is quantised to 16-bit PCM, so the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from scipy.signal import butter, lfilter, sosfilt

__all__ = ["DemoCorpusConfig", "generate_demo_corpus", "CLASSES", "METADATA_COLUMNS"]

CLASSES: tuple[str, ...] = ("neu", "hap", "ang", "sad")
#: IEMOCAP 4-class shares (neu 1708, hap+exc 1636, ang 1103, sad 1084): roughly balanced, not perfectly.
_CLASS_SHARES = np.array([1708, 1636, 1103, 1084], dtype=float) / 5531.0
METADATA_COLUMNS: tuple[str, ...] = ("utt_id", "path", "label", "speaker", "session", "gender", "transcript")
_UTTS_PER_DIALOG = 11  # IEMOCAP dialogs hold ~10-30 turns per speaker; the ids only need the shape

# Random-stream tags for default_rng([seed, tag, index]); fixed forever so corpora stay reproducible.
_STREAM_SPEAKER, _STREAM_LABELS, _STREAM_TEXT, _STREAM_SYNTH, _STREAM_SESSION = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class DemoCorpusConfig:
    """Parameters of the demo corpus (maps one-to-one onto the ``demo:`` section of params.yaml)."""

    seed: int = 0
    n_speakers: int = 10
    n_sessions: int = 5
    utts_per_speaker: int = 44
    sample_rate: int = 16000
    min_duration: float = 1.5
    max_duration: float = 8.0
    jobs: int = 1

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"demo corpus config: {key}={getattr(self, key)!r} {why}")

        for key in ("seed", "n_speakers", "n_sessions", "utts_per_speaker", "sample_rate", "jobs"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise bad(key, "must be an integer")
        if self.seed < 0:
            raise bad("seed", "must be >= 0")
        if not 1 <= self.n_sessions <= 99:
            raise bad("n_sessions", "must be between 1 and 99 (session ids are Ses01..Ses99)")
        if self.n_speakers != 2 * self.n_sessions:
            raise ValueError(
                f"demo corpus config: n_speakers={self.n_speakers} must equal 2 * n_sessions "
                f"({2 * self.n_sessions}): each session has one female and one male speaker, as in IEMOCAP"
            )
        if self.utts_per_speaker < len(CLASSES):
            raise bad("utts_per_speaker", f"must be >= {len(CLASSES)} so every speaker has every class")
        if self.sample_rate < 8000:
            raise bad("sample_rate", "must be >= 8000 Hz")
        if self.jobs < 1:
            raise bad("jobs", "must be >= 1")
        if not (0.5 <= self.min_duration < self.max_duration <= 60.0):
            raise ValueError(
                f"demo corpus config: need 0.5 <= min_duration ({self.min_duration}) < max_duration "
                f"({self.max_duration}) <= 60 seconds"
            )

    @classmethod
    def from_dict(cls, d: dict) -> DemoCorpusConfig:
        """Build from a params.yaml ``demo:`` mapping; unknown keys are an error naming the key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"demo corpus config: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------------------------
# Sentence bank. Everyday English (checked against CMUdict by the tests). Neutral sentences are used by every
# class; the coloured ones give the transcript part of the signal.
_NEUTRAL = (
    "Okay.", "Yes.", "I know.", "Right, sure.", "Is that so?", "What time is it?", "Let me see.",
    "That is fine.", "I think so.", "Come in.", "Where are you going?", "Maybe later.", "Give me a minute.",
    "Not really.", "Who told you that?", "I guess so.", "Sure, why not?", "See you tomorrow.",
    "I left the keys on the kitchen table.", "The train leaves at a quarter past seven.",
    "We should call your brother before dinner.", "Did you remember to buy some milk?",
    "The office is on the third floor.", "She said the meeting moved to Thursday.",
    "I need to pick up the car tomorrow.", "Can you pass me that blue folder?",
    "He works at the bank near the station.", "They painted the house last summer.",
    "We can talk about it after lunch.", "The weather report says it might rain.",
    "I have to fill out these forms first.", "My flight lands a little after noon.",
    "Put the boxes in the back room.", "The store closes at nine on Sundays.",
    "I read about it in the paper this morning.", "There is a parking space across the street.",
    "Your package arrived while you were out.", "We moved here about three years ago.",
    "The printer on the second floor is out of paper.", "Turn left at the light and park behind the school.",
    "I usually walk to work when the weather is nice.", "Do you know where I put my glasses?",
    "The next bus comes in ten minutes.", "He wants to know if you need a ride.",
    "I was thinking we could drive up to the lake this weekend.",
    "The man at the counter said they would send a new card in the mail.",
    "If you take the second exit, the hotel is right there on the corner.",
    "She asked me to bring the chairs from the garage and set them up in the yard.",
    "We need to finish the report before Friday because the manager wants to read it.",
    "I told him the number twice, but he still wrote down the wrong address.",
    "The doctor said I should come back in two weeks so they can run the test again.",
    "My sister is staying with us for a few days while they fix the roof.",
    "You can leave your coat in the hall and we will have some coffee in the kitchen.",
    "They announced that the museum will be closed on Monday for the holiday.",
    "I think the bus stops on the other side of the bridge, near the old library.",
    "He spent the whole afternoon looking for the receipt so he could return the jacket.",
    "The form asks for your name, your address and a phone number.",
    "We still have to decide what to cook for dinner on Saturday.",
)
_COLOURED = {
    "hap": (
        "That is wonderful news!", "I am so happy for you!", "This is the best day ever!",
        "I love it, thank you so much!", "We won, can you believe it?", "Oh, that is fantastic, I am thrilled!",
        "I got the job, I am so excited!", "You look great, this is amazing!", "Ha, that is so funny, I love it!",
        "I cannot wait to see them, it will be great fun!", "What a beautiful surprise, thank you!",
        "Congratulations, I am really proud of you!", "We are getting married in June!",
        "Finally, everything worked out perfectly!",
    ),
    "ang": (
        "This is ridiculous!", "Stop lying to me!", "I am sick and tired of this!",
        "Get out of my office right now!", "How dare you talk to me like that?",
        "You never listen to a word I say!", "That is completely unacceptable!",
        "I have waited for an hour, this is outrageous!", "Do not touch my things again!",
        "You ruined everything, you idiot!", "I told you a hundred times, stop it!",
        "I am furious with you, leave me alone!", "Why do you keep doing this to me?",
        "This is the worst service I have ever seen!",
    ),
    "sad": (
        "I miss her so much.", "Nothing ever works out for me.", "He is gone and he is not coming back.",
        "I feel so alone these days.", "I am sorry, I just cannot do this anymore.", "It hurts to think about it.",
        "I lost my job today.", "We had to put the dog down last night.", "Nobody even remembered my birthday.",
        "I wish things were different.", "I cried all night after the funeral.", "It is hopeless, I give up.",
        "She left and took the children with her.", "I do not know what to do anymore.",
    ),
}
#: Emotion-coloured interjections that may open an otherwise neutral sentence; fillers are used by every class.
_INTERJECTIONS = {
    "hap": ("Wow,", "Great,", "Oh, nice,", "Awesome,", "Oh, good,"),
    "ang": ("Damn,", "Come on,", "Seriously,", "Oh, shut up,", "For heaven's sake,"),
    "sad": ("Sadly,", "Oh well,", "Unfortunately,", "I am afraid", "Oh dear,"),
}
_FILLERS = ("Well,", "So,", "Anyway,", "You know,", "Okay,")
_P_OWN_COLOURED = 0.35  # share of hap/ang/sad utterances that say a sentence coloured by their own emotion
_P_INTERJECTION = 0.15  # share of hap/ang/sad utterances: own interjection + neutral sentence
_P_OTHER_COLOURED = 0.05  # sarcasm/irony: a sentence coloured by another emotion (also for neu)
_P_FILLER = 0.15
_P_SECOND_SENTENCE = 0.3  # append a neutral sentence when the first is short
_MAX_COMBINED_SYLLABLES = 22


# ----------------------------------------------------------------------------------------------------------------
# Phones. Formants (Hz, F1-F4) for an adult male voice (Peterson & Barney 1952); speakers scale them.
_VOWELS = {
    "i": (270, 2290, 3010, 3500), "e": (530, 1840, 2480, 3500), "ae": (660, 1720, 2410, 3500),
    "a": (730, 1090, 2440, 3500), "o": (570, 840, 2410, 3500), "u": (300, 870, 2240, 3500),
    "uh": (640, 1190, 2390, 3500), "schwa": (500, 1500, 2500, 3500),
}
_VOWEL_SPELLING = {  # first two letters of a vowel group, else first letter
    "ee": "i", "ea": "i", "ie": "i", "ey": "e", "ai": "e", "ay": "e", "ei": "e", "oo": "u", "ou": "a",
    "ow": "o", "oa": "o", "oe": "o", "au": "a", "aw": "a", "oi": "o", "oy": "o", "ue": "u", "ui": "u",
    "a": "ae", "e": "e", "i": "i", "o": "o", "u": "uh", "y": "i",
}
_APPROX = {"l": (360, 1300, 2700, 3500), "r": (420, 1300, 1600, 3500), "w": (300, 700, 2200, 3500),
           "y": (280, 2200, 2900, 3500)}
_NASAL = (250, 1100, 2300, 3500)
_FRIC_BANDS = {"s": (4000.0, 7500.0), "sh": (2200.0, 5000.0), "f": (1200.0, 7500.0), "burst": (1500.0, 6000.0)}
_FRIC_AMP = {"s": 0.22, "sh": 0.22, "f": 0.07, "burst": 0.35}
_FUNCTION_WORDS = frozenset(
    "a an the to of and or is in on at it i you he she we they me my your his her our their be am are was "
    "were for with that this so do not can".split()
)


@dataclass(frozen=True)
class _Phone:
    kind: str  # vowel | fric | stop | nasal | approx | h
    dur: float  # nominal seconds at rate factor 1
    voice: float = 0.0  # voicing amplitude
    formants: tuple[float, ...] | None = None
    fric: str | None = None  # band key of the noise component
    stressed: bool = False
    accent_ok: bool = False  # may carry a pitch accent (stressed syllable of a content word)


def _word_phones(word: str) -> list[_Phone]:
    """Crude letter-to-phone rules: enough to give each word its own syllable count and vowel colours."""
    w = re.sub(r"[^a-z]", "", word.lower())
    if not w:
        return []
    content = w not in _FUNCTION_WORDS
    if len(w) > 3 and w.endswith("e") and w[-2] not in "aeiouy" and re.search(r"[aeiouy]", w[:-1]):
        w = w[:-1]  # silent final e
    w = re.sub(r"(.)\1", r"\1", w)  # double letters
    groups = re.findall(r"[aeiou]+|y(?![aeiou])|[^aeiou]", w)
    if groups and groups[0] == "y" and len(groups) > 1:
        groups[0] = "Y"  # initial y is an approximant
    phones: list[_Phone] = []
    n_vowels = sum(1 for g in groups if g[0] in "aeiouy")
    vowel_i = 0
    i = 0
    while i < len(groups):
        g = groups[i]
        nxt = groups[i + 1] if i + 1 < len(groups) else ""
        if g[0] in "aeiouy":
            stressed = vowel_i == 0 and (content or n_vowels > 1)
            key = _VOWEL_SPELLING.get(g[:2], _VOWEL_SPELLING[g[0]])
            if not stressed and n_vowels > 1:
                key = "schwa"
            phones.append(_Phone("vowel", 0.13 if stressed else 0.075, 1.0 if stressed else 0.75,
                                 _VOWELS[key], stressed=stressed, accent_ok=stressed and content))
            vowel_i += 1
        elif g + nxt in ("sh", "ch", "th", "ph", "ng", "ck", "wh", "qu"):
            pair = g + nxt
            i += 1
            if pair in ("sh", "ch"):
                phones.append(_Phone("fric", 0.09, 0.0, fric="sh"))
            elif pair in ("th", "ph"):
                phones.append(_Phone("fric", 0.08, 0.15 if pair == "th" else 0.0, fric="f"))
            elif pair == "ng":
                phones.append(_Phone("nasal", 0.06, 0.35, _NASAL))
            elif pair == "wh":
                phones.append(_Phone("approx", 0.05, 0.5, _APPROX["w"]))
            else:  # ck, qu
                phones.append(_Phone("stop", 0.06, 0.0, fric="burst"))
                if pair == "qu":
                    phones.append(_Phone("approx", 0.04, 0.5, _APPROX["w"]))
        elif g in "sczx":
            if g == "c" and nxt[:1] not in ("e", "i", "y"):
                phones.append(_Phone("stop", 0.06, 0.0, fric="burst"))
            else:
                phones.append(_Phone("fric", 0.09, 0.2 if g == "z" else 0.0, fric="s"))
        elif g in "fv":
            phones.append(_Phone("fric", 0.08, 0.25 if g == "v" else 0.0, fric="f"))
        elif g in "jg" and (g == "j" or nxt[:1] in ("e", "i")):
            phones.append(_Phone("fric", 0.08, 0.2, fric="sh"))
        elif g in "ptkbdgq":
            phones.append(_Phone("stop", 0.05 if g in "bdg" else 0.065, 0.1 if g in "bdg" else 0.0, fric="burst"))
        elif g in "mn":
            phones.append(_Phone("nasal", 0.06, 0.35, _NASAL))
        elif g in "lrw" or g == "Y":
            phones.append(_Phone("approx", 0.05, 0.5, _APPROX["y" if g == "Y" else g]))
        elif g == "h":
            phones.append(_Phone("h", 0.05))
        i += 1
    return phones


def _syllables(text: str) -> int:
    return sum(1 for w in text.split() for p in _word_phones(w) if p.kind == "vowel")


# ----------------------------------------------------------------------------------------------------------------
# Emotion profiles: offsets/multipliers relative to the speaker's neutral voice, scaled by expressiveness x
# intensity. f0 in semitones, range = pitch-accent size multiplier, rate = syllables/s multiplier, level in dB,
# oq = glottal open quotient offset (low = pressed, high = breathy), breath = aspiration multiplier,
# tilt = one-pole low-pass coefficient offset (high = steeper spectral tilt), jitter/shimmer multipliers,
# pause = pause-length multiplier.
_PROFILES = {
    "neu": dict(f0=0.0, range=1.0, rate=1.0, level=0.0, oq=0.0, breath=1.0, tilt=0.0, jitter=1.0, pause=1.0),
    "hap": dict(f0=3.0, range=1.7, rate=1.08, level=3.0, oq=-0.05, breath=1.1, tilt=-0.12, jitter=1.15,
                pause=0.9),
    "ang": dict(f0=3.5, range=1.4, rate=1.12, level=6.0, oq=-0.15, breath=0.5, tilt=-0.25, jitter=1.4,
                pause=0.8),
    "sad": dict(f0=-2.0, range=0.5, rate=0.78, level=-5.0, oq=0.12, breath=2.2, tilt=0.25, jitter=1.5,
                pause=1.6),
}


def _speaker_params(seed: int, index: int, gender: str) -> dict:
    rng = np.random.default_rng([seed, _STREAM_SPEAKER, index])
    female = gender == "F"
    return dict(
        f0=rng.uniform(200.0, 240.0) if female else rng.uniform(100.0, 130.0),
        formant_scale=rng.uniform(1.12, 1.22) if female else rng.uniform(0.95, 1.05),
        oq=rng.uniform(0.5, 0.62) + (0.04 if female else 0.0),
        breath=rng.uniform(0.03, 0.09) * (1.4 if female else 1.0),
        tilt=rng.uniform(0.25, 0.45),
        jitter=rng.uniform(0.004, 0.012),
        shimmer=rng.uniform(0.03, 0.08),
        rate=rng.uniform(4.0, 5.2),  # syllables per second of speech
        level=rng.uniform(-3.0, 3.0),  # dB
        range_st=rng.uniform(2.0, 4.0),  # pitch-accent size, semitones
        expressiveness=rng.uniform(0.6, 1.15),
        formant_jitter=rng.uniform(0.97, 1.03, size=4),  # speaker-specific vowel space
    )


def _session_params(seed: int, index: int) -> dict:
    rng = np.random.default_rng([seed, _STREAM_SESSION, index])
    return dict(gain=rng.uniform(-3.0, 3.0), noise_db=rng.uniform(-66.0, -56.0), colour=rng.uniform(-0.35, 0.35))


# ----------------------------------------------------------------------------------------------------------------
# Filters (designed once per sample rate).
@lru_cache(maxsize=8)
def _fric_sos(sr: int) -> dict[str, np.ndarray]:
    nyq = sr / 2.0
    out = {}
    for key, (lo, hi) in _FRIC_BANDS.items():
        hi = min(hi, 0.45 * sr)
        lo = min(lo, 0.6 * hi)
        out[key] = butter(2, [lo / nyq, hi / nyq], btype="bandpass", output="sos")
    return out


def _formant_sos(formants: Sequence[float], sr: int) -> np.ndarray:
    """Cascade of 2-pole resonators with unit DC gain (Klatt 1980), one sos row per formant below Nyquist."""
    bws = (80.0, 100.0, 150.0, 250.0)
    rows = []
    for f, bw in zip(formants, bws, strict=False):
        if f >= 0.45 * sr:
            continue
        r = math.exp(-math.pi * bw / sr)
        c = -2.0 * r * math.cos(2.0 * math.pi * f / sr)
        a2 = r * r
        rows.append([1.0 + c + a2, 0.0, 0.0, 1.0, c, a2])
    return np.asarray(rows, dtype=np.float64)


def _smooth(x: np.ndarray, n_taps: int) -> np.ndarray:
    """Centred triangular smoothing over ~``n_taps`` samples, shape preserved.

    Two centred moving averages via cumsum: sequential and BLAS-free (reproducible bits), O(n) whatever the width.
    """
    half = max(1, n_taps // 4)
    for _ in range(2):
        c = np.cumsum(np.concatenate([[0.0], np.full(half, x[0]), x, np.full(half, x[-1])]))
        x = (c[2 * half + 1:] - c[: len(c) - 2 * half - 1]) / (2 * half + 1)
    return x


def _ramp(x: np.ndarray) -> np.ndarray:
    """0 for x <= -1, 1 for x >= 1, raised-sine in between (cross-fade windows that sum to one)."""
    return 0.5 + 0.5 * np.sin(0.5 * np.pi * np.clip(x, -1.0, 1.0))


# ----------------------------------------------------------------------------------------------------------------
# Planning: who says what with which label. Cheap; done in the parent process.
@dataclass(frozen=True)
class _UttPlan:
    index: int
    utt_id: str
    session: str
    session_index: int
    speaker: str
    speaker_index: int
    gender: str
    label: str
    transcript: str


def _decap(text: str) -> str:
    return text if text.startswith(("I ", "I,")) else text[0].lower() + text[1:]


def _choose_transcript(rng: np.random.Generator, label: str) -> str:
    u = rng.random()
    others = [c for c in _COLOURED if c != label]
    if label != "neu" and u < _P_OWN_COLOURED:
        text = _COLOURED[label][rng.integers(len(_COLOURED[label]))]
    elif u > 1.0 - _P_OTHER_COLOURED:
        bank = _COLOURED[others[rng.integers(len(others))]]
        text = bank[rng.integers(len(bank))]
    else:
        text = _NEUTRAL[rng.integers(len(_NEUTRAL))]
        if label != "neu" and u < _P_OWN_COLOURED + _P_INTERJECTION:
            intj = _INTERJECTIONS[label][rng.integers(len(_INTERJECTIONS[label]))]
            text = f"{intj} {_decap(text)}"
        elif rng.random() < _P_FILLER:
            text = f"{_FILLERS[rng.integers(len(_FILLERS))]} {_decap(text)}"
    if rng.random() < _P_SECOND_SENTENCE:
        extra = _NEUTRAL[rng.integers(len(_NEUTRAL))]
        if extra != text and _syllables(text) + _syllables(extra) <= _MAX_COMBINED_SYLLABLES:
            text = f"{extra} {text}" if rng.random() < 0.5 else f"{text} {extra}"
    return text


def _class_quota(rng: np.random.Generator, n: int) -> list[str]:
    """Labels for one speaker: IEMOCAP shares by largest remainder (random tie-break), every class >= 1, shuffled."""
    raw = _CLASS_SHARES * n
    counts = np.maximum(np.floor(raw).astype(int), 1)
    rest = raw - np.floor(raw) + rng.random(len(CLASSES)) * 1e-3
    for k in np.argsort(-rest):
        if counts.sum() >= n:
            break
        counts[k] += 1
    while counts.sum() > n:  # only when the >= 1 floor overshot
        counts[int(np.argmax(counts))] -= 1
    labels = np.repeat(np.array(CLASSES), counts)
    return [str(x) for x in rng.permutation(labels)]


def _plan(cfg: DemoCorpusConfig) -> list[_UttPlan]:
    plans: list[_UttPlan] = []
    n_dialogs = max(1, math.ceil(cfg.utts_per_speaker / _UTTS_PER_DIALOG))
    index = 0
    for s in range(cfg.n_sessions):
        session = f"Ses{s + 1:02d}"
        for g_i, gender in enumerate(("F", "M")):
            spk_index = 2 * s + g_i
            labels = _class_quota(np.random.default_rng([cfg.seed, _STREAM_LABELS, spk_index]), cfg.utts_per_speaker)
            per_dialog = np.full(n_dialogs, cfg.utts_per_speaker // n_dialogs)
            per_dialog[: cfg.utts_per_speaker % n_dialogs] += 1
            j = 0
            for d in range(n_dialogs):
                lead = "F" if d % 2 == 0 else "M"  # who opens the dialog names it, as in IEMOCAP
                for t in range(int(per_dialog[d])):
                    rng = np.random.default_rng([cfg.seed, _STREAM_TEXT, index])
                    plans.append(_UttPlan(
                        index=index, utt_id=f"{session}{lead}_demo{d + 1:02d}_{gender}{t:03d}", session=session,
                        session_index=s, speaker=f"{session}{gender}", speaker_index=spk_index, gender=gender,
                        label=labels[j], transcript=_choose_transcript(rng, labels[j]),
                    ))
                    j += 1
                    index += 1
    return plans


# ----------------------------------------------------------------------------------------------------------------
# Synthesis of one utterance.
def _phone_sequence(text: str, rng: np.random.Generator, pause_mult: float) -> list[tuple[_Phone | None, float]]:
    """(phone, nominal duration) list; ``None`` phones are pauses."""
    seq: list[tuple[_Phone | None, float]] = []
    tokens = text.split()
    for k, tok in enumerate(tokens):
        for p in _word_phones(tok):
            seq.append((p, p.dur * float(rng.lognormal(0.0, 0.15))))
        if k == len(tokens) - 1:
            break
        if tok[-1] in ".!?":
            seq.append((None, rng.uniform(0.25, 0.55) * pause_mult))
        elif tok[-1] in ",;:":
            seq.append((None, rng.uniform(0.12, 0.3) * pause_mult))
        elif rng.random() < 0.08 * pause_mult:
            seq.append((None, rng.uniform(0.05, 0.15) * pause_mult))
    return seq


def _render(plan: _UttPlan, cfg: DemoCorpusConfig) -> np.ndarray:
    """Synthesise one utterance; returns int16 PCM samples, shape (n,), n/sr within [min, max] duration."""
    sr = cfg.sample_rate
    rng = np.random.default_rng([cfg.seed, _STREAM_SYNTH, plan.index])
    spk = _speaker_params(cfg.seed, plan.speaker_index, plan.gender)
    ses = _session_params(cfg.seed, plan.session_index)
    prof = _PROFILES[plan.label]
    # Emotional intensity: some emotional utterances are barely marked (overlap with neutral), some strongly.
    k = spk["expressiveness"] * rng.uniform(0.35, 1.25)

    def mult(key: str) -> float:  # multiplier interpolated on a log scale by intensity
        return float(prof[key] ** k)

    f0_utt = spk["f0"] * 2.0 ** ((prof["f0"] * k + rng.normal(0.0, 1.2)) / 12.0)
    range_st = spk["range_st"] * mult("range") * rng.lognormal(0.0, 0.25)
    rate = spk["rate"] * mult("rate") * rng.lognormal(0.0, 0.1)
    oq = float(np.clip(spk["oq"] + prof["oq"] * k + rng.normal(0.0, 0.04), 0.3, 0.85))
    breath = spk["breath"] * mult("breath") * rng.lognormal(0.0, 0.3)
    tilt = float(np.clip(spk["tilt"] + prof["tilt"] * k + rng.normal(0.0, 0.07), 0.0, 0.9))
    jitter = spk["jitter"] * mult("jitter") * rng.lognormal(0.0, 0.25)
    shimmer = spk["shimmer"] * mult("jitter") * rng.lognormal(0.0, 0.25)
    level_db = -26.0 + spk["level"] + prof["level"] * k + rng.normal(0.0, 2.0)
    rec_gain_db = ses["gain"] + rng.normal(0.0, 3.0)  # microphone distance / recording level
    pause_mult = mult("pause") * rng.lognormal(0.0, 0.2)
    fric_gain = 1.3 if plan.label == "ang" else 0.8 if plan.label == "sad" else 1.0

    # --- timeline -----------------------------------------------------------------------------------------
    seq = _phone_sequence(plan.transcript, rng, pause_mult)
    n_syll = sum(1 for p, _ in seq if p is not None and p.kind == "vowel")
    speech_nominal = sum(d for p, d in seq if p is not None)
    speech_time = max(n_syll, 1) / rate
    scale = speech_time / speech_nominal
    durs = np.array([d * scale if p is not None else d for p, d in seq])
    lead, trail = rng.uniform(0.08, 0.3), rng.uniform(0.1, 0.35)
    total = lead + durs.sum() + trail
    if total > cfg.max_duration - 0.05:  # too long for the clip limit: speak (and pause) faster
        squeeze = (cfg.max_duration - 0.05 - lead - trail) / durs.sum()
        durs *= squeeze
    elif total < cfg.min_duration + 0.05:  # short utterance: more silence around it, as in segmented dialogs
        extra = min(cfg.min_duration + rng.uniform(0.05, 0.6), cfg.max_duration - 0.05) - total
        lead, trail = lead + extra * 0.4, trail + extra * 0.6
    n = int(round((lead + durs.sum() + trail) * sr))
    n = int(np.clip(n, math.ceil(cfg.min_duration * sr), math.floor(cfg.max_duration * sr)))
    bounds = np.concatenate([[0.0], lead + np.cumsum(durs)]) * sr
    bounds = np.clip(np.round(bounds).astype(np.int64), 0, n)
    bounds[0] = int(round(lead * sr))
    starts, ends = bounds[:-1], bounds[1:]
    lens = ends - starts

    phones = [p for p, _ in seq]
    fscale = spk["formant_scale"] * spk["formant_jitter"]
    voice_seg = np.array([p.voice if p is not None else 0.0 for p in phones])
    asp_seg = np.array([1.0 if p is not None and p.kind == "h" else 0.0 for p in phones])

    ms = sr // 1000
    # Envelopes are built on a 1 ms grid (piecewise constant per phone, smoothed) and interpolated to samples.
    grid = np.arange(0, n + ms, ms)
    seg_of_grid = np.searchsorted(ends, grid, side="right")  # phone index per grid point (len(phones) = after)
    inside = (grid >= starts[0]) & (seg_of_grid < len(phones))
    up_i = np.arange(n) // ms  # linear interpolation from the 1 ms grid (uniform: cheaper than np.interp)
    up_f = (np.arange(n) % ms) / ms

    def envelope(values: np.ndarray, smooth_ms: int) -> np.ndarray:
        if not values.any():
            return np.zeros(n)
        g = np.where(inside, values[np.minimum(seg_of_grid, len(values) - 1)], 0.0)
        g = _smooth(g, smooth_ms)
        return g[up_i] + up_f * (g[up_i + 1] - g[up_i])

    a_voice = envelope(voice_seg, 12)
    a_asp = envelope(asp_seg, 12)

    # --- F0 contour (semitones around f0_utt) --------------------------------------------------------------
    t = np.arange(n) / sr
    st = np.zeros(n)
    # phrase declination, reset at pauses >= 150 ms
    phrase_edges = [starts[0]] + [int(s) for p, s, ln in zip(phones, starts, lens, strict=True)
                                  if p is None and ln >= 0.15 * sr] + [ends[-1]]
    decl = rng.normal(3.0, 0.8) * (0.6 if plan.label == "sad" else 1.0)
    for a, b in zip(phrase_edges[:-1], phrase_edges[1:], strict=True):
        if b > a:
            st[a:b] += np.linspace(decl / 2, -decl / 2, b - a)
    # pitch accents: raised-cosine bumps on stressed syllables of content words
    vowel_idx = [i for i, p in enumerate(phones) if p is not None and p.kind == "vowel"]
    for i in vowel_idx:
        p = phones[i]
        if not p.accent_ok or rng.random() > 0.75:
            continue
        a = int(starts[i] - 0.4 * lens[i])
        b = int(ends[i] + 0.3 * lens[i])
        a, b = max(a, 0), min(b, n)
        if b - a > 2:
            st[a:b] += range_st * rng.uniform(0.4, 1.0) * np.hanning(b - a)
    # utterance-final movement: fall, or a rise for questions and some happy endings
    if vowel_idx:
        i = vowel_idx[-1]
        a, b = int(starts[i]), n
        rise = plan.transcript.rstrip().endswith("?") or (plan.label == "hap" and rng.random() < 0.4)
        st[a:b] += np.linspace(0.0, (0.7 if rise else -0.5) * range_st, b - a)
    # slow wander (50 Hz control rate)
    n_ctrl = n // (sr // 50) + 2
    wander = _smooth(rng.normal(0.0, 1.0, n_ctrl), 9) * 1.2
    st += np.interp(t, np.arange(n_ctrl) / 50.0, wander)
    f0 = np.clip(f0_utt * 2.0 ** (st / 12.0), 50.0, 600.0)

    # --- glottal source: Rosenberg pulses with per-cycle jitter and shimmer -----------------------------
    phase0 = np.cumsum(f0) / sr
    n_cyc = int(phase0[-1]) + 2
    jit = 1.0 + jitter * np.clip(rng.standard_normal(n_cyc), -3, 3)
    shim = np.maximum(1.0 + shimmer * np.clip(rng.standard_normal(n_cyc), -3, 3), 0.2)
    phase = np.cumsum(f0 * jit[np.minimum(phase0.astype(np.int64), n_cyc - 1)]) / sr
    cyc = np.minimum(phase.astype(np.int64), n_cyc - 1)
    frac = phase - np.floor(phase)
    tp, tn = 0.65 * oq, 0.35 * oq
    flow = np.zeros(n)
    rising, falling = frac < tp, (frac >= tp) & (frac < oq)
    flow[rising] = 0.5 * (1.0 - np.cos((np.pi / tp) * frac[rising]))
    flow[falling] = np.cos((0.5 * np.pi / tn) * (frac[falling] - tp))
    dflow = np.diff(flow, prepend=flow[0]) * shim[cyc]
    voiced = a_voice > 0.3
    dflow /= np.sqrt(np.mean(dflow[voiced] ** 2)) if voiced.any() else 1.0
    noise = rng.standard_normal(n)
    asp = lfilter([1.0, -0.9], [1.0], noise)  # aspiration is mostly high-frequency
    src = a_voice * dflow + (breath * a_voice + 0.25 * a_asp) * (0.4 + flow) * asp
    src = lfilter([1.0 - tilt], [1.0, -tilt], src)  # spectral tilt: pressed (flat) .. breathy (steep)

    # --- vocal tract: per-phone formant cascade, cross-faded (time-varying formants) --------------------
    ftargets: list[tuple[float, ...] | None] = [p.formants if p is not None else None for p in phones]
    nxt = None
    for i in range(len(ftargets) - 1, -1, -1):  # consonants/pauses take the next vowel's (coarticulation)
        if ftargets[i] is None:
            ftargets[i] = nxt
        else:
            nxt = ftargets[i]
    last = next((f for f in reversed(ftargets) if f is not None), _VOWELS["schwa"])
    ftargets = [f if f is not None else last for f in ftargets]
    # merge runs with identical targets
    seg_b, seg_f = [0], [ftargets[0]]
    for i in range(1, len(ftargets)):
        if ftargets[i] != seg_f[-1]:
            seg_b.append(int(starts[i]))
            seg_f.append(ftargets[i])
    seg_b.append(n)
    seg_b[0] = 0
    y = np.zeros(n)
    h = 15 * ms
    warm = 12 * ms
    active = (a_voice + a_asp) > 1e-4
    for j, ftg in enumerate(seg_f):
        b0, b1 = seg_b[j], seg_b[j + 1]
        hj0 = min(h, max(1, (b1 - b0) // 2), max(1, (b0 - seg_b[j - 1]) // 2) if j > 0 else h)
        hj1 = min(h, max(1, (b1 - b0) // 2), max(1, (seg_b[j + 2] - b1) // 2) if j + 2 < len(seg_b) else h)
        r0 = max(0, b0 - hj0 - warm)
        r1 = min(n, b1 + hj1)
        if r1 <= r0 or not active[r0:r1].any():
            continue
        w = np.zeros(r1 - r0)
        w[max(b0 - hj0, r0) - r0:] = 1.0
        if j > 0:  # fade in across [b0 - hj0, b0 + hj0)
            a, b = max(b0 - hj0, r0), min(b0 + hj0, r1)
            w[a - r0:b - r0] = _ramp((np.arange(a, b) - b0) / hj0)
        if j + 1 < len(seg_f):  # fade out across [b1 - hj1, b1 + hj1)
            a, b = max(b1 - hj1, r0), min(b1 + hj1, r1)
            w[a - r0:b - r0] -= _ramp((np.arange(a, b) - b1) / hj1)
        sos = _formant_sos([f * s for f, s in zip(ftg, fscale, strict=True)], sr)
        y[r0:r1] += w * sosfilt(sos, src[r0:r1])
    y /= np.sqrt(np.mean(y[voiced] ** 2)) if voiced.any() else max(float(np.sqrt(np.mean(y**2))), 1e-9)

    # --- fricatives and stop bursts -------------------------------------------------------------------------
    fsos = _fric_sos(sr)
    fnoise = rng.standard_normal(n)
    for key in _FRIC_BANDS:
        env_seg = np.array([_FRIC_AMP[key] if p is not None and p.fric == key else 0.0 for p in phones])
        if not env_seg.any():
            continue
        if key == "burst":  # a stop is closure + a short burst at its end
            env = np.zeros(n)
            for i in np.flatnonzero(env_seg):
                b = int(ends[i])
                a = max(int(starts[i]), b - 12 * ms)
                env[a:b] = env_seg[i] * np.linspace(1.0, 0.3, b - a)
        else:
            env = envelope(env_seg, 10)
        y += fric_gain * sosfilt(fsos[key], fnoise * env) * 1.2
    # --- level, session channel, background noise ------------------------------------------------------------
    speech_rms = np.sqrt(np.mean(y[voiced] ** 2)) if voiced.any() else 1.0
    y *= 10.0 ** ((level_db + rec_gain_db) / 20.0) / speech_rms
    c = ses["colour"]  # mild first-order tilt EQ: the session's microphone/room
    y = lfilter([1.0 + c, -c], [1.0], y) if c > 0 else lfilter([1.0 + c], [1.0, c], y)
    floor = lfilter([1.0], [1.0, -0.6], rng.standard_normal(n))
    floor *= 10.0 ** ((ses["noise_db"] + rec_gain_db) / 20.0) / np.sqrt(np.mean(floor**2))
    y += floor
    peak = np.max(np.abs(y))
    if peak > 0.95:  # recorder limiter
        y *= 0.95 / peak
    return np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16)


def _wav_bytes(pcm: np.ndarray, sr: int) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, pcm, sr, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write atomically, and only when the bytes differ (keeps mtimes and DVC hashes stable on re-runs)."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _render_and_write(args: tuple[list[_UttPlan], DemoCorpusConfig, str]) -> None:
    plans, cfg, out_dir = args
    for plan in plans:
        pcm = _render(plan, cfg)
        _write_if_changed(Path(out_dir) / "wav" / plan.session / f"{plan.utt_id}.wav", _wav_bytes(pcm, cfg.sample_rate))


def generate_demo_corpus(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_speakers: int = 10,
    n_sessions: int = 5,
    utts_per_speaker: int = 44,
    sample_rate: int = 16000,
    min_duration: float = 1.5,
    max_duration: float = 8.0,
    jobs: int = 1,
) -> pd.DataFrame:
    """Write the demo corpus under ``out_dir`` and return its metadata.

    Layout: ``out_dir/wav/<session>/<utt_id>.wav`` (16-bit PCM mono) and ``out_dir/metadata.csv`` with columns
    ``utt_id,path,label,speaker,session,gender,transcript`` (``path`` relative to ``out_dir``, POSIX). Returns that
    table (one row per utterance, ``n_speakers * utts_per_speaker`` rows). Output bytes depend only on the
    arguments other than ``jobs``; files whose bytes are already right are left untouched, and stale ``*.wav``
    files under ``out_dir/wav`` (from a larger earlier config) are removed so the directory hash is stable.
    """
    cfg = DemoCorpusConfig(seed=seed, n_speakers=n_speakers, n_sessions=n_sessions,
                           utts_per_speaker=utts_per_speaker, sample_rate=sample_rate, min_duration=min_duration,
                           max_duration=max_duration, jobs=jobs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: demo corpus output must be a directory; remove the file or pick another path")
    out.mkdir(parents=True, exist_ok=True)
    plans = _plan(cfg)
    n_chunks = cfg.jobs * 4 if cfg.jobs > 1 else 1
    chunks = [(plans[i::n_chunks], cfg, str(out)) for i in range(n_chunks)]
    if cfg.jobs > 1:
        with ProcessPoolExecutor(max_workers=cfg.jobs) as ex:
            list(ex.map(_render_and_write, chunks))
    else:
        for c in chunks:
            _render_and_write(c)
    df = pd.DataFrame(
        [(p.utt_id, f"wav/{p.session}/{p.utt_id}.wav", p.label, p.speaker, p.session, p.gender, p.transcript)
         for p in plans],
        columns=list(METADATA_COLUMNS),
    )
    wanted = {out / p for p in df["path"]}
    for stale in sorted((out / "wav").glob("*/*.wav")) + sorted((out / "wav").glob("*/.*.tmp")):
        if stale not in wanted:  # from a bigger earlier config, or an interrupted write
            stale.unlink()
    for d in sorted((out / "wav").iterdir()):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    _write_if_changed(out / "metadata.csv", df.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    return df


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pipeline.corpus.demo_corpus OUT_DIR [--seed N ...]`` (the pipeline CLI wraps the same function)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    for f in fields(DemoCorpusConfig):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    ns = vars(ap.parse_args(argv))
    out_dir = ns.pop("out_dir")
    df = generate_demo_corpus(out_dir, **ns)
    print(f"wrote {len(df)} utterances to {out_dir} ({asdict(DemoCorpusConfig(**ns))})")


if __name__ == "__main__":
    main()
