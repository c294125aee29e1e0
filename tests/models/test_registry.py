"""Registry API: names, errors, configs, infos."""

import dataclasses

import pytest

import models
from models import (
    create_model,
    default_config,
    describe_models,
    example_batch,
    get_model_info,
    list_models,
    make_config,
    model_config_class,
    register_model,
)
from models.presets import TINY as SMALL

EXPECTED = {
    "ilt", "cat", "cnn_transformer", "cnn_lstm_transformer", "ks_transformer",
    "multilevel_transformer", "multigranularity", "rlc", "head_fusion", "classical", "probe",
}  # fmt: skip

BASELINES = {"classical", "probe"}

FOLD_PLANS = {
    "ilt": "random_55_25_20",
    "cat": "random_55_25_20",
    "cnn_transformer": "random_55_25_20",
    "cnn_lstm_transformer": "random_55_25_20",
    "ks_transformer": "loso",
    "multilevel_transformer": "session_3_1_1",
    "multigranularity": "session_3_1_1",
    "rlc": "random_811_10fold",
    "head_fusion": "random_80_20_seeds",
    "classical": "loso",
    "probe": "loso",
}

INPUTS = {
    "ilt": {"x": "logmel40"},
    "ks_transformer": {"audio": "wav2vec2", "text": "roberta"},
    "multilevel_transformer": {"fbank": "fbank128", "phonemes": "phonemes", "glove": "glove"},
    "multigranularity": {
        "fbank": "fbank128",
        "phonemes": "phonemes",
        "glove": "glove",
        "bert_cls": "bert_cls",
    },
    "rlc": {"lld": "lld17"},
    "head_fusion": {"mfcc": "mfcc13"},
    "classical": {"x": "functionals"},
    "probe": {"x": "whisper"},
}


def test_all_models_registered():
    assert set(list_models()) == EXPECTED
    assert set(SMALL) == EXPECTED  # the test configs cover every model


def test_duplicate_name_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("rlc", train={}, paper={}, fold_plan="x")(
            type("X", (), {"Config": object, "input_specs": None})
        )


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError) as err:
        create_model("nope")
    assert "nope" in str(err.value) and "ks_transformer" in str(err.value)


def test_unknown_config_key_names_key_and_model():
    with pytest.raises(ValueError) as err:
        create_model("cat", bogus_size=3)
    assert "bogus_size" in str(err.value) and "'cat'" in str(err.value)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_default_config_roundtrips(name):
    cfg = default_config(name)
    assert cfg and all(not isinstance(v, tuple) for v in cfg.values())  # YAML-friendly
    assert make_config(name, **cfg) == model_config_class(name)()
    assert dataclasses.is_dataclass(model_config_class(name))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model_info(name):
    info = get_model_info(name)
    assert info.fold_plan == FOLD_PLANS[name]
    assert {"title", "wa", "ua", "protocol"} <= set(info.paper)
    if name in BASELINES:  # not from a paper: nothing published to compare with
        assert info.paper["ua"] is None and info.paper["wa"] is None
    else:
        assert info.paper["ua"] > 60
        assert (info.paper["wa"] is None) == (name == "rlc")  # RLC reports no WA
    needed = ("select_on", "fit") if info.train.get("fit") == "sklearn" else (
        "optimizer", "lr", "batch_size", "epochs", "schedule", "select_on")
    for key in needed:
        assert key in info.train
    assert info.train["select_on"].startswith("val_")  # never select on test
    if name in INPUTS:
        assert info.inputs == INPUTS[name]
    model = create_model(name, **SMALL[name])
    assert model.model_inputs() == info.inputs_for(**SMALL[name])
    # every batch key the specs announce is produced by example_batch, and the masks too
    batch = example_batch(name, **SMALL[name])
    for key, spec in info.input_specs(**SMALL[name]).items():
        assert key in batch
        assert spec.mask_key is None or spec.mask_key in batch
        assert spec.dim_param in dataclasses.asdict(model.config)


def test_inputs_follow_config():
    info = get_model_info("rlc")
    assert info.inputs_for(use_text=True) == {"lld": "lld17", "text": "word2vec"}
    assert info.inputs == {"lld": "lld17"}
    assert get_model_info("cat").inputs == {"x": "logmel40"}


def test_paper_numbers():
    assert get_model_info("cat").paper["wa"] == 68.10 and get_model_info("cat").paper["ua"] == 69.25
    assert get_model_info("ks_transformer").paper["wa"] == 74.3
    assert get_model_info("rlc").paper["ua"] == 69.4
    assert get_model_info("head_fusion").paper["wa"] == 76.18


def test_feature_dims_are_constructor_params():
    # the training code passes the dims it finds in the store
    m = create_model("ks_transformer", **dict(SMALL["ks_transformer"], audio_dim=24, text_dim=12))
    out = m.eval()(
        **example_batch("ks_transformer", **dict(SMALL["ks_transformer"], audio_dim=24, text_dim=12))
    )
    assert out.shape == (2, 4)
    m = create_model("ilt", num_classes=6, **SMALL["ilt"])
    assert m.eval()(**example_batch("ilt", **SMALL["ilt"])).shape == (2, 6)


def test_bad_enum_values_raise():
    with pytest.raises(ValueError, match="fusion"):
        create_model("ilt", fusion="max")
    with pytest.raises(ValueError, match="attention"):
        create_model("head_fusion", attention="dot")
    with pytest.raises(ValueError, match="both"):
        create_model("cat", cnn_to_lstm_only=True, lstm_to_cnn_only=True)
    with pytest.raises(ValueError, match="key_len_mode"):
        create_model("ks_transformer", **dict(SMALL["ks_transformer"], key_len_mode="x"))


def test_describe_models():
    rows = describe_models()
    assert [r["name"] for r in rows] == list_models()
    for r in rows:
        assert r["params"] > (100 if r["name"] in BASELINES else 10_000) and r["inputs"] and r["paper"]
        assert r["fold_plan"]
    assert models.describe_models is describe_models


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_infos_are_yaml_and_json_safe(name):
    import json

    import yaml

    info = get_model_info(name)
    for data in (info.train, info.paper, default_config(name), info.inputs):
        yaml.safe_dump(data)
        json.dumps(data)
