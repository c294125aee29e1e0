"""The Prefect ``extract`` flow writes the same feature file the DVC stage writes (both call
``pipeline.extraction.extract.extract_feature``), and reports what it wrote."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import soundfile as sf
import yaml


def _corpus(root):
    rows = ["utt_id,path,label,speaker,session"]
    rng = np.random.default_rng(0)
    for i in range(3):
        t = np.arange(int(16000 * (0.3 + 0.05 * i))) / 16000
        wav = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.01 * rng.standard_normal(t.size)
        (root / "wav").mkdir(parents=True, exist_ok=True)
        sf.write(root / "wav" / f"u{i}.wav", wav.astype(np.float32), 16000, subtype="PCM_16")
        rows.append(f"u{i},wav/u{i}.wav,{['neu', 'hap', 'ang'][i]},s{i % 2},Ses0{1 + i % 2}")
    (root / "corpus.csv").write_text("\n".join(rows) + "\n")
    params = {"dataset": {"name": "manifest", "root": str(root / "corpus.csv"), "options": {}},
              "folds": {"seed": 0, "options": {}}, "extract": {"jobs": 1, "batch_size": 2},
              "features": {"logmel40": {}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root / "params.yaml"


def _arrays(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out


def test_extract_flow_matches_the_stage(tmp_path, prefect_harness):
    from pipeline.cli import stages
    from pipeline.orchestration.feature_flow import extract_flow

    params = _corpus(tmp_path)
    manifest = tmp_path / "manifest.parquet"
    stages.manifest(params, manifest)
    stages.extract(params, "logmel40", manifest, tmp_path / "stage.h5", progress=False)
    summary = extract_flow("logmel40", params_path=str(params), manifest_path=str(manifest),
                           out=str(tmp_path / "flow.h5"), jobs=1)
    assert summary["extractor"] == "logmel40" and summary["n_utts"] == 3, summary
    a, b = _arrays(tmp_path / "stage.h5"), _arrays(tmp_path / "flow.h5")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a if a[k].dtype.kind == "f")


def test_extract_feature_device_only_for_model_features(tmp_path):
    from pipeline.core.params import ParamsError, load_params
    from pipeline.extraction.extract import extract_feature

    params = load_params(_corpus(tmp_path))
    with pytest.raises(ParamsError, match="logmel40.*no device setting"):
        extract_feature(params, "logmel40", tmp_path / "m.parquet", tmp_path / "f.h5", device="cuda")
