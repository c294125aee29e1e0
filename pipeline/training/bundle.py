"""A trained model as one loadable object: from a cross-validation run, or from a self-contained exported directory.

:class:`Predictor` holds everything inference needs and nothing else: the model name and resolved config, the
label order, the resolved train settings (which decide crops/pads/segments and normalisation), per fold the
selected weights (each member's, for a ``seed_ensemble`` run) and normalisation statistics, and per feature set the exact extractor name/version/config/hash
and audio settings recorded in the training run's feature files.

Sources
    :func:`load_run` reads a workspace run: ``<results>/<model>/{metrics.json, run.json}``, the fold checkpoint
    dirs recorded in ``run.json`` (``checkpoints``: ``<storage>/checkpoints/<model>/<fold cache key>/`` with
    ``best.safetensors`` and, for ``normalize: fold``, ``normalization.safetensors``) and the feature files the
    run read (their attributes carry the extractor configs). :func:`export_predictor` writes a directory that
    :func:`load_bundle` reads with only the package installed.

Compatibility
    Both loaders refuse (one line naming the mismatch) a model whose feature extractor version/config hash or
    training-code version (``pipeline.core.codehash.code_version``) differs from the installed package: features computed
    by another extractor version would silently feed the model inputs it never saw. ``force=True`` overrides it
    with a warning.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from features.errors import EmoflowError
from pipeline.training.data import Normalizer

BUNDLE_FILE = "emoflow-model.json"
BUNDLE_FORMAT = 1
#: run-record keys an exported model keeps (what it was trained and scored on)
RUN_SUMMARY = ("corpus", "fold_plan", "plan_hash", "n_folds", "folds", "comparable_to_paper",
               "not_comparable_because", "random_weights_features", "paper", "select_on", "git", "started")


class PredictError(EmoflowError, RuntimeError):
    """A model that cannot be loaded or run as asked; the message names the file/setting and what to do."""


@dataclass(frozen=True)
class FeatureSpec:
    """How one feature set is recomputed for new audio: what the training run's feature file recorded."""

    name: str
    extractor_version: str
    config: dict[str, Any]
    config_hash: str
    audio: dict[str, Any]
    input: str = "audio"


@dataclass
class FoldModel:
    """One fold's selected weights and input statistics (``normalization``: ``{"<key>.mean"|"<key>.std": …}``)."""

    fold: int
    state: dict[str, torch.Tensor]
    normalization: dict[str, torch.Tensor] = field(default_factory=dict)
    #: a ``seed_ensemble`` run: the weights of members 1, 2, … (``state`` is member 0's); their probabilities are averaged
    member_states: list[dict[str, torch.Tensor]] = field(default_factory=list)

    @property
    def states(self) -> list[dict[str, torch.Tensor]]:
        """Every model of the fold: one, or the members of a seed ensemble."""
        return [self.state, *self.member_states]

    def normalizer(self, mode: str | None) -> Normalizer | None:
        """The fold's :class:`Normalizer` exactly as training built it (statistics as saved, float32)."""
        if mode in (None, "none"):
            return None
        stats = {k[: -len(".mean")]: (self.normalization[k].numpy(), self.normalization[k[:-5] + ".std"].numpy())
                 for k in self.normalization if k.endswith(".mean")}
        return Normalizer(mode, stats)


@dataclass
class Predictor:
    model: str
    labels: list[str]
    model_params: dict[str, Any]
    train: dict[str, Any]
    features: dict[str, FeatureSpec]
    folds: dict[int, FoldModel]
    code_version: str
    metrics: dict[str, Any]
    source: str
    label_map: dict[str, str] | None = None
    #: what the run was (corpus, fold plan, per-fold scores, comparability with the paper): exported beside the model
    run: dict[str, Any] = field(default_factory=dict)
    #: dimensional targets (``task: regression | multitask``), in the order of the head's outputs after the logits
    targets: list[str] = field(default_factory=list)

    @property
    def needs_text(self) -> bool:
        return any(f.input == "text" for f in self.features.values())

    @property
    def task(self) -> str:
        return str(self.train.get("task", "classification"))

    @property
    def n_logits(self) -> int:
        """Leading output columns that are class logits (0 for regression; see ``pipeline.training.train.n_logits``)."""
        return 0 if self.task == "regression" else len(self.labels)


def target_names(rec: dict[str, Any], where: str) -> list[str]:
    """The V/A/D targets a run's head predicts, in training's order (``pipeline.corpus.dimensional.target_columns``), from
    its dimensional scores (``dimensional`` in run records, ``ccc`` in metrics.json); ``[]`` for classification."""
    from pipeline.corpus.dimensional import target_columns

    if str((rec.get("train") or {}).get("task", "classification")) == "classification":
        return []
    names = list(rec.get("targets") or target_columns([*(rec.get("dimensional") or {}), *(rec.get("ccc") or {})]))
    if not names:
        raise PredictError(f"{where}: a task {rec['train']['task']!r} run that records no dimensional targets "
                           "(no `ccc` scores in metrics.json); rerun its training")
    return names


# ----------------------------------------------------------------------------------------------- compatibility


def mismatches(p: Predictor) -> list[str]:
    """What differs between the model's recorded extractors/code and the installed package (empty: compatible)."""
    from features.base import config_hash, extractor_class
    from pipeline.core.codehash import (
        code_version,  # not via pipeline.orchestration.flows: no Prefect import on a cold start
    )

    out = []
    for name, spec in sorted(p.features.items()):
        try:
            cls = extractor_class(name)
            cfg = cls.Config.from_dict(spec.config, name=name)
        except ValueError as e:
            out.append(f"feature {name}: the installed extractor cannot take the recorded config ({e})")
            continue
        if str(cls.version) != spec.extractor_version:
            out.append(f"feature {name}: extractor version {spec.extractor_version} recorded, {cls.version} installed")
        elif config_hash(name, str(cls.version), cfg) != spec.config_hash:
            out.append(f"feature {name}: config hash {spec.config_hash[:12]} recorded, the installed extractor "
                       f"gives {config_hash(name, str(cls.version), cfg)[:12]} for the same config")
    installed = code_version()
    if installed != p.code_version:
        out.append(f"code version {p.code_version[:12]} recorded, {installed[:12]} installed")
    return out


def check_compatible(p: Predictor, force: bool = False) -> Predictor:
    problems = mismatches(p)
    if problems and not force:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise PredictError(f"{p.source}: {problems[0]}{more}; retrain or re-export with the installed emoflow, "
                           "or pass --force to run it anyway")
    for msg in problems:
        warnings.warn(f"{p.source}: {msg} (--force: running anyway)", stacklevel=2)
    return p


# ----------------------------------------------------------------------------------------------- from a run


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PredictError(f"{path}: unreadable ({e}); rerun the training stage that writes it") from None


def _feature_spec(path: Path, trained_hash: str | None, model: str) -> FeatureSpec:
    from features.store import FeatureReader, StoreError

    if not path.is_file():
        raise PredictError(f"{path}: the feature file {model} was trained on is gone; `dvc pull` or re-extract it "
                           "(its attributes hold the extractor config predict needs), or use an exported model")
    try:
        r = FeatureReader(path)
        m = r.meta
        r.close()
    except StoreError as e:
        raise PredictError(str(e)) from None
    if trained_hash and m.config_hash != trained_hash:
        raise PredictError(f"{path}: re-extracted with another config (hash {m.config_hash[:12]}) since {model} was "
                           f"trained on {trained_hash[:12]}; retrain it (`dvc repro train@{model}`)")
    return FeatureSpec(m.extractor, m.extractor_version, dict(m.config), m.config_hash, dict(m.audio), m.input)


def _load_fold(fold: int, ckpt: Path, mode: str | None, where: str, members: int = 1) -> FoldModel:
    from pipeline.training.train import member_checkpoint_dirs

    bests = [d / "best.safetensors" for d in member_checkpoint_dirs(ckpt, members)]
    for best in bests:
        if not best.is_file():
            raise PredictError(f"{where} fold {fold}: {best} is missing (a killed or cleaned run); rerun the "
                               "training (`dvc repro train@<model>`; finished folds come back from the cache)")
    norm_path = ckpt / "normalization.safetensors"
    norm = load_file(str(norm_path)) if norm_path.is_file() else {}
    if mode == "fold" and not norm:
        raise PredictError(f"{where} fold {fold}: trained with normalize: fold but {norm_path} is missing; "
                           "rerun the training")
    states = [load_file(str(b)) for b in bests]
    return FoldModel(fold, states[0], norm, states[1:])


def _checkpoint_dirs(rec: dict[str, Any], model: str, where: str) -> dict[str, str]:
    """Recorded fold checkpoint dirs; for runs recorded before they were, the fold's single candidate dir."""
    if rec.get("checkpoints"):
        return dict(rec["checkpoints"])
    storage = Path((rec.get("parameters") or {}).get("storage_dir") or ".emoflow/prefect")
    out = {}
    for f in sorted(rec.get("folds") or {}, key=int):
        cands = sorted((storage / "checkpoints" / model).glob(f"{model}-fold{int(f)}-*"))
        if len(cands) != 1:
            raise PredictError(f"{where}: run.json records no checkpoint dirs and fold {f} has {len(cands)} "
                               f"candidates under {storage}/checkpoints/{model}; rerun `dvc repro train@{model}`")
        out[str(f)] = str(cands[0])
    return out


def load_run(model: str, results_dir: str | Path = "results", *, force: bool = False) -> Predictor:
    """The fold ensemble of the cross-validation run in ``<results_dir>/<model>/`` (see the module docstring)."""
    from models import get_model_info

    rdir = Path(results_dir) / model
    if not rdir.is_dir():
        raise PredictError(f"{rdir}: no run of {model!r}; train it first (`dvc repro train@{model}`) or pass "
                           "--results / --from an exported model")
    missing = [n for n in ("metrics.json", "run.json") if not (rdir / n).is_file()]
    if missing:
        raise PredictError(f"{rdir}: partial run ({', '.join(missing)} missing); rerun `dvc repro train@{model}`")
    metrics, run = _read_json(rdir / "metrics.json"), _read_json(rdir / "run.json")
    rec = {**metrics, **run}  # run.json holds provenance; older runs kept all of it in metrics.json
    for key in ("labels", "train", "model_params", "code_version"):
        if key not in rec:
            raise PredictError(f"{rdir}: the run records no {key!r}; rerun `dvc repro train@{model}`")
    from pipeline.training.train import ensemble_size

    members = ensemble_size(rec["train"])  # models per fold
    params = dict(rec["model_params"])
    features_dir = Path((rec.get("parameters") or {}).get("features_dir") or "data/features")
    recorded = rec.get("features") or {}
    names = sorted({s.feature for s in get_model_info(model).input_specs(**dict(params)).values()})
    features = {n: _feature_spec(features_dir / f"{n}.h5", (recorded.get(n) or {}).get("config_hash"), model)
                for n in names}
    mode = rec["train"].get("normalize")
    folds = {int(f): _load_fold(int(f), Path(d), mode, str(rdir), members)
             for f, d in _checkpoint_dirs(rec, model, str(rdir)).items()}
    if not folds:
        raise PredictError(f"{rdir}: the run has no folds; rerun `dvc repro train@{model}`")
    p = Predictor(model, list(rec["labels"]), params, dict(rec["train"]), features, folds, str(rec["code_version"]),
                  metrics, str(rdir), rec.get("label_map"), {k: rec[k] for k in RUN_SUMMARY if k in rec},
                  target_names(rec, str(rdir)))
    return check_compatible(p, force)


# ----------------------------------------------------------------------------------------------- export


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def export_predictor(p: Predictor, out_dir: str | Path) -> Path:
    """Write ``p`` as a self-contained directory (replaced atomically: a reader never sees half of it)."""
    out = Path(out_dir)
    if out.exists() and not (out / BUNDLE_FILE).is_file() and any(out.iterdir()):
        raise PredictError(f"{out}: exists and is not an exported emoflow model; pick an empty or new directory")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    folds = {}
    for k, fm in sorted(p.folds.items()):
        (tmp / f"fold{k}").mkdir()
        files = {"weights": f"fold{k}/model.safetensors"}
        save_file({n: t.contiguous() for n, t in fm.state.items()}, str(tmp / files["weights"]))
        if fm.normalization:
            files["normalization"] = f"fold{k}/normalization.safetensors"
            save_file(fm.normalization, str(tmp / files["normalization"]))
        for j, state in enumerate(fm.member_states, start=1):  # a seed ensemble's other members
            files[f"member{j}"] = f"fold{k}/member{j}.safetensors"
            save_file({n: t.contiguous() for n, t in state.items()}, str(tmp / files[f"member{j}"]))
        folds[str(k)] = {**files, "sha256": {n: _sha256(tmp / f) for n, f in files.items()}}
    doc = {
        "format": BUNDLE_FORMAT, "model": p.model, "labels": p.labels, "label_map": p.label_map,
        "model_params": p.model_params, "train": p.train,
        "features": {n: dataclasses.asdict(s) for n, s in p.features.items()},
        "code_version": p.code_version, "folds": folds, "run": p.run, "exported_from": p.source,
        **({"targets": p.targets} if p.targets else {}),
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(), "emoflow_version": _package_version(),
    }
    (tmp / BUNDLE_FILE).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (tmp / "metrics.json").write_text(json.dumps(p.metrics, indent=2, default=str) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _package_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("emoflow")
    except PackageNotFoundError:  # pragma: no cover - a checkout run without `pip install -e .`
        return None


def load_bundle(path: str | Path, *, force: bool = False) -> Predictor:
    """An exported model directory (see :func:`export_predictor`), checked file by file and against the package."""
    root = Path(path)
    if not (root / BUNDLE_FILE).is_file():
        raise PredictError(f"{root}: not an exported emoflow model ({BUNDLE_FILE} missing); "
                           "make one with `emoflow export --model M --out DIR`")
    doc = _read_json(root / BUNDLE_FILE)
    if doc.get("format") != BUNDLE_FORMAT:
        raise PredictError(f"{root}: bundle format {doc.get('format')!r}, this emoflow reads {BUNDLE_FORMAT}; "
                           "re-export it with this version")
    folds = {}
    for k, entry in doc["folds"].items():
        for what in entry["sha256"]:
            f = root / entry[what]
            if not f.is_file() or _sha256(f) != entry["sha256"][what]:
                raise PredictError(f"{f}: missing or changed since export (sha256 differs); copy the whole "
                                   "directory again or re-export")
        norm = load_file(str(root / entry["normalization"])) if "normalization" in entry else {}
        others = [load_file(str(root / entry[f"member{j}"])) for j in range(1, len(entry)) if f"member{j}" in entry]
        folds[int(k)] = FoldModel(int(k), load_file(str(root / entry["weights"])), norm, others)
    metrics = _read_json(root / "metrics.json") if (root / "metrics.json").is_file() else {}
    p = Predictor(doc["model"], list(doc["labels"]), dict(doc["model_params"]), dict(doc["train"]),
                  {n: FeatureSpec(**s) for n, s in doc["features"].items()}, folds, str(doc["code_version"]),
                  metrics, str(root), doc.get("label_map"), dict(doc.get("run") or {}),
                  target_names({**metrics, "train": doc["train"], "targets": doc.get("targets")}, str(root)))
    return check_compatible(p, force)


__all__ = ["FeatureSpec", "FoldModel", "PredictError", "Predictor", "check_compatible", "export_predictor",
           "load_bundle", "load_run", "mismatches"]
