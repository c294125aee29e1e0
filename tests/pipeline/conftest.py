"""Fixtures for the pipeline tests: tiny deterministic wavs and a miniature IEMOCAP release in the real formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SR = 16000


def _write_wav(path: Path, seconds: float = 0.1, freq: float = 220.0, sr: int = SR, silent: bool = False) -> Path:
    """A mono 16-bit wav: a 0.1-amplitude sine (or silence) of ``seconds``; distinct freq → distinct bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sr))) / sr
    x = np.zeros_like(t) if silent else 0.1 * np.sin(2 * np.pi * freq * t)
    sf.write(str(path), x.astype(np.float32), sr, subtype="PCM_16")
    return path


@pytest.fixture
def wav_factory():
    """``wav_factory(path, seconds=0.1, freq=220.0, silent=False) -> path``."""
    return _write_wav


# Per session N: (dialog, utt-suffix, code, start, end, transcript). Speakers come from the LAST token's letter,
# so Ses0NF_impro01_M000 is the male speaker of session N although the dialog id starts with F.
_MINI_DIALOGS = {
    "impro01": [
        ("F000", "neu", 6.2901, 8.2357, "Excuse me."),
        ("M000", "exc", 8.4000, 9.9000, "Do you have your forms?"),
        ("F001", "xxx", 10.0100, 11.3925, "Yeah."),
        ("M001", "fru", 11.5000, 13.0000, "Let me see them."),
    ],
    "script01_1": [
        ("F000", "ang", 2.0000, 3.5000, "What is it?"),
        ("M000", "sad", 3.6000, 5.1000, "Nothing, I guess."),
        ("M001", "hap", 5.2000, 6.0000, "Oh, that's great!"),
    ],
}
MINI_EXPECTED_COUNTS = {"ang": 2, "hap": 4, "neu": 2, "sad": 2}  # exc→hap; xxx, fru dropped; 2 sessions


def _vad_block(lines: list[str], start: float, end: float, utt: str, code: str) -> None:
    lines += [
        f"[{start:.4f} - {end:.4f}]\t{utt}\t{code}\t[2.5000, 2.5000, 2.5000]",
        "C-E2:\tNeutral;\t()",
        "C-E3:\tNeutral;\t(curious)",
        "A-E3:\tval 3; act 2; dom  2;\t()",
        "A-F1:\tval 2; act 1; dom  2;\t(mildly aggravated but staying polite, attitude)",
        "",
    ]


def build_mini_iemocap(root: Path, sessions=(1, 2)) -> dict:
    """Write a miniature ``IEMOCAP_full_release`` under ``root``; return {utt_id: info} for every labelled turn."""
    truth = {}
    k = 0
    for n in sessions:
        sdir = root / f"Session{n}"
        emo = sdir / "dialog" / "EmoEvaluation"
        trans_dir = sdir / "dialog" / "transcriptions"
        for d_short, turns in _MINI_DIALOGS.items():
            first = "F" if d_short.startswith("impro") else "M"
            dialog = f"Ses0{n}{first}_{d_short}"
            lab = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            trn = []
            for suffix, code, t0, t1, text in turns:
                utt = f"{dialog}_{suffix}"
                _vad_block(lab, t0, t1, utt, code)
                trn.append(f"{utt} [{t0:08.4f}-{t1:08.4f}]: {text}")
                seconds = 0.05 + 0.01 * k
                _write_wav(sdir / "sentences" / "wav" / dialog / f"{utt}.wav", seconds, freq=200.0 + 20 * k)
                truth[utt] = {
                    "code": code, "session": f"Ses0{n}", "speaker": f"Ses0{n}{suffix[0]}", "gender": suffix[0],
                    "subset": "improvised" if "impro" in d_short else "scripted", "transcript": text,
                    "duration": round(seconds * SR) / SR, "dialog": dialog,
                }
                k += 1
            # noise/non-utterance lines that must be skipped
            trn.insert(1, "M_MRK [000.0000-001.0000]: [BREATHING]")
            trn.append(f"{dialog}_FXX0 [020.0000-021.0000]: [LAUGHTER]")
            emo.mkdir(parents=True, exist_ok=True)
            (emo / f"{dialog}.txt").write_text("\n".join(lab) + "\n")
            trans_dir.mkdir(parents=True, exist_ok=True)
            (trans_dir / f"{dialog}.txt").write_text("\n".join(trn) + "\n")
            # the real folder also holds sub-folders with per-annotator files; a summary-like line in one of
            # them would add a bogus utterance (with no wav) if the adapter read sub-folders
            cat = emo / "Categorical"
            cat.mkdir(exist_ok=True)
            (cat / f"{dialog}_e2_cat.txt").write_text(f"[1.0000 - 2.0000]\t{dialog}_F999\tang\t[1, 1, 1]\n")
            (emo / "Attribute").mkdir(exist_ok=True)
            # a macOS resource fork, as found on some copies
            (emo / f"._{dialog}.txt").write_text(f"[0.0000 - 1.0000]\t{dialog}_F777\tneu\t[1, 1, 1]\n")
    return truth


@pytest.fixture
def mini_iemocap(tmp_path) -> tuple[Path, dict]:
    """(root, truth) of a 2-session miniature IEMOCAP release."""
    root = tmp_path / "IEMOCAP_full_release"
    return root, build_mini_iemocap(root)
