"""HDF5 feature store: one file per feature set, one dataset per utterance.

Layout of ``data/features/<name>.h5``::

    /                       attrs: format, extractor, extractor_version, config (JSON), config_hash, dim,
                                   frame_shift, input ("audio"|"text"), code_version, packages (JSON),
                                   provenance (JSON: random_weights, weights source, ...), audio (JSON), n_utts
    /utts/<utt_id>          one array per utterance (frames × dim, tokens × dim, or dim);
                            attrs: source_sha256 (audio checksum, or the transcript's sha256 for text features)

Reads are by name (HDF5's B-tree index: constant in practice, no scan). Writes never touch the final path until
they are complete:

* each finished batch is written to its own shard ``<name>.h5.parts/<n>.h5`` (temp file + ``os.replace``), so a
  killed run loses at most the batches in flight and a rerun resumes from the shards;
* :meth:`FeatureWriter.commit` merges the still-valid utterances of the previous file and the shards into a temp
  file and renames it over the final path (atomic on POSIX), then removes the shards;
* an utterance is (re)computed only when it is missing or its source checksum or the config hash changed
  (**incremental**); a different config hash invalidates the whole file, since one file holds one config.

One writer per feature file: a second writer fails fast with :class:`StoreLockedError` instead of corrupting it.
Readers (:class:`FeatureReader`) open lazily per process, so one reader object can be handed to several
DataLoader workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import zlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from features.errors import EmoflowError, disk_full_error, human_bytes, is_disk_full

FORMAT_VERSION = 1
_PARTS_SUFFIX = ".parts"
_PACKAGES = ("emoflow", "numpy", "scipy", "librosa", "soundfile", "h5py", "torch", "transformers", "g2p_en", "gensim")


class StoreError(EmoflowError, RuntimeError):
    """A feature file is missing, malformed or inconsistent; the message names the file and what to do."""


class StoreLockedError(StoreError):
    """Another process is writing the same feature file."""


class MissingUtteranceError(StoreError, KeyError):
    """An utterance the manifest names is not in the feature file (a KeyError too, for ``in``-style callers)."""

    def __str__(self) -> str:  # the message, not KeyError's repr of it
        return str(self.args[0]) if self.args else ""


def text_sha256(text: str | None) -> str:
    return hashlib.sha256((text or "").encode("utf-8")).hexdigest()


def package_versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (absent ones left out)."""
    out = {}
    for pkg in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def code_version() -> str:
    """emoflow's version plus the git revision of the checkout when there is one (provenance only: cache keys use
    the extractor's own ``version``, so an unrelated commit does not invalidate stored features)."""
    version = package_versions().get("emoflow", "0+unknown")
    try:
        import subprocess

        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except Exception:
        rev = ""
    return f"{version}+g{rev}" if rev else version


def _check_utt_id(utt_id: str) -> str:
    if not utt_id or "/" in utt_id or utt_id in (".", ".."):
        raise StoreError(f"utterance id {utt_id!r} cannot be stored: ids must be non-empty and contain no '/'")
    return utt_id


_REQUIRED_ATTRS = ("extractor", "extractor_version", "config", "config_hash", "dim", "frame_shift", "input",
                   "provenance", "audio", "code_version", "packages")


@dataclass
class FileMeta:
    """The file-level attributes of a feature file (what ``emoflow features info`` prints)."""

    extractor: str
    extractor_version: str
    config: dict[str, Any]
    config_hash: str
    dim: int | None
    frame_shift: float | None
    input: str
    provenance: dict[str, Any] = field(default_factory=dict)
    audio: dict[str, Any] = field(default_factory=dict)
    code_version: str = ""
    packages: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_extractor(cls, extractor, audio: dict[str, Any] | None = None) -> FileMeta:
        return cls(
            extractor=extractor.name,
            extractor_version=str(extractor.version),
            config=extractor.config.to_dict(),
            config_hash=extractor.config_hash,
            dim=extractor.dim,
            frame_shift=extractor.frame_shift,
            input=extractor.input,
            provenance=dict(extractor.provenance()),
            audio=dict(audio or {}),
            code_version=code_version(),
            packages=package_versions(),
        )

    @property
    def random_weights(self) -> bool:
        return bool(self.provenance.get("random_weights", False))

    def write_attrs(self, h5: h5py.File) -> None:
        a = h5.attrs
        a["format"] = FORMAT_VERSION
        a["extractor"] = self.extractor
        a["extractor_version"] = self.extractor_version
        a["config"] = json.dumps(self.config, sort_keys=True, default=str)
        a["config_hash"] = self.config_hash
        a["dim"] = -1 if self.dim is None else int(self.dim)
        a["frame_shift"] = float("nan") if self.frame_shift is None else float(self.frame_shift)
        a["input"] = self.input
        a["provenance"] = json.dumps(self.provenance, sort_keys=True, default=str)
        a["random_weights"] = self.random_weights
        a["audio"] = json.dumps(self.audio, sort_keys=True)
        a["code_version"] = self.code_version
        a["packages"] = json.dumps(self.packages, sort_keys=True)

    @classmethod
    def read_attrs(cls, h5: h5py.File, path: Path) -> FileMeta:
        a = h5.attrs
        fmt = a.get("format")
        if fmt is not None and int(fmt) != FORMAT_VERSION:
            raise StoreError(f"{path}: written in store format {int(fmt)} by another emoflow version (this one reads "
                             f"format {FORMAT_VERSION}); {rerun_hint(path)}")
        missing = [k for k in _REQUIRED_ATTRS if k not in a]
        if missing:
            raise StoreError(f"{path}: not an emoflow feature file, or one from an older version (attribute(s) "
                             f"{missing} missing); {rerun_hint(path)}")
        try:
            dim = int(a["dim"])
            fs = float(a["frame_shift"])
            return cls(
                extractor=str(a["extractor"]),
                extractor_version=str(a["extractor_version"]),
                config=json.loads(a["config"]),
                config_hash=str(a["config_hash"]),
                dim=None if dim < 0 else dim,
                frame_shift=None if fs != fs else fs,
                input=str(a["input"]),
                provenance=json.loads(a["provenance"]),
                audio=json.loads(a["audio"]),
                code_version=str(a["code_version"]),
                packages=json.loads(a["packages"]),
            )
        except KeyError as e:
            raise StoreError(
                f"{path}: not an emoflow feature file, or one from an older version (attribute {e} missing); "
                f"{rerun_hint(path)}"
            ) from None


def rerun_hint(path: Path) -> str:
    """What to do about a damaged or outdated feature file: recompute it (DVC replaces it atomically)."""
    path = Path(path)
    name = path.parent.name.removesuffix(".h5" + _PARTS_SUFFIX) if path.parent.name.endswith(_PARTS_SUFFIX) \
        else path.stem
    return f"rerun `dvc repro extract@{name}` (or `emoflow features verify {name}` to see every problem)"


def _open_ro(path: Path) -> h5py.File:
    try:
        # Files are only ever replaced by rename, never written in place, so readers need no HDF5 file lock
        # (which also fails on read-only DVC cache links and some network file systems).
        return h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise StoreError(f"{path}: feature file not found; run `dvc repro extract@<name>` or `dvc pull`") from None
    except OSError as e:
        raise StoreError(f"{path}: unreadable HDF5 file, truncated or damaged ({_first_line(e)}); "
                         f"{rerun_hint(path)}") from None


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class FeatureReader:
    """Read-only access to one feature file: ``reader[utt_id] -> np.ndarray``.

    The HDF5 handle is opened on first access in each process (and reopened after a fork), so the reader can be
    passed to ``torch.utils.data.DataLoader`` workers.

    Reads are the training loop's hot path (one per utterance per epoch): the file and its ``/utts`` group are
    opened and checked once per process, and a numeric array is read through h5py's low-level API straight into
    a new NumPy array, which skips the high-level ``Dataset`` wrapper's per-call work (object and weak-reference
    creation, selection parsing). ``benchmarks/store.py`` measures it against raw h5py.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._group: h5py.Group | None = None
        self._pid: int | None = None
        self.meta = FileMeta.read_attrs(self._file(), self.path)

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = _open_ro(self.path)
            self._group = None
            self._pid = os.getpid()
        return self._h5

    def _utts(self) -> h5py.Group:
        f = self._file()
        if self._group is None:
            if "utts" not in f:
                raise StoreError(f"{self.path}: no /utts group; the file is incomplete — delete it and extract "
                                 "again")
            self._group = f["utts"]
        return self._group

    def __getitem__(self, utt_id: str) -> np.ndarray:
        group = self._group if self._pid == os.getpid() and self._group is not None else self._utts()
        try:
            dsid = h5py.h5d.open(group.id, utt_id.encode())
        except (KeyError, OSError) as e:
            if isinstance(e, KeyError) and not group.id.links.exists(utt_id.encode()):
                raise MissingUtteranceError(f"{utt_id!r} is not in {self.path} (re-run extraction for the current "
                                            "manifest)") from None
            # the name is there but its object header is damaged: one line, not an HDF5 traceback mid-fold
            raise StoreError(f"{self.path}: utterance {utt_id!r} is unreadable, the file is damaged "
                             f"({_first_line(e)}); {rerun_hint(self.path)}") from None
        try:
            return _read_whole(dsid)
        except OSError as e:
            raise StoreError(f"{self.path}: utterance {utt_id!r} is unreadable, the file is damaged "
                             f"({_first_line(e)}); {rerun_hint(self.path)}") from None

    def __contains__(self, utt_id: object) -> bool:
        return isinstance(utt_id, str) and utt_id in self._utts()

    def __len__(self) -> int:
        return len(self._utts())

    def keys(self) -> list[str]:
        return list(self._utts().keys())

    def source_sha256(self, utt_id: str) -> str:
        return str(self._dataset(utt_id).attrs["source_sha256"])

    def checksums(self) -> dict[str, str]:
        return {k: str(self._dataset(k).attrs["source_sha256"]) for k in self._utts()}

    def check_crc32(self, utt_ids: list[str] | None = None) -> int:
        """Read every utterance (or those of ``utt_ids`` the file holds) and compare its bytes with the CRC-32 the
        writer stored; raise a one-line :class:`StoreError` naming the file and the first mismatching (or
        unreadable) utterance, with the rerun hint. Utterances written before CRCs were recorded are skipped.
        Returns how many utterances were checked. Training calls it once per run, before any fold starts."""
        group = self._utts()
        names = list(group) if utt_ids is None else [u for u in dict.fromkeys(utt_ids) if u in group]
        bad: list[str] = []
        checked = 0
        for utt_id in names:
            stored = self._dataset(utt_id).attrs.get("crc32")
            if stored is None:
                continue
            checked += 1
            if data_crc32(self[utt_id]) != int(stored):
                bad.append(utt_id)
        if bad:
            more = f" (and {len(bad) - 1} more utterance(s))" if len(bad) > 1 else ""
            raise StoreError(f"{self.path}: utterance {bad[0]!r}{more}: data checksum mismatch — the stored bytes "
                             f"changed after they were written (disk or copy corruption); {rerun_hint(self.path)}")
        return checked

    def _dataset(self, utt_id: str) -> h5py.Dataset:
        """One utterance's dataset; a damaged one (h5py gives None, or raises) is a one-line StoreError."""
        try:
            ds = self._utts()[utt_id]
            if ds is not None:
                return ds
            why = "its object header cannot be read"
        except KeyError as e:
            if not self._utts().id.links.exists(utt_id.encode()):
                raise MissingUtteranceError(f"{utt_id!r} is not in {self.path} (re-run extraction for the "
                                            "current manifest)") from None
            why = _first_line(e)
        except OSError as e:
            why = _first_line(e)
        raise StoreError(f"{self.path}: utterance {utt_id!r} is unreadable, the file is damaged ({why}); "
                         f"{rerun_hint(self.path)}")

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = self._group = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_h5"] = state["_group"] = None  # handles never cross process boundaries
        state["_pid"] = None
        return state

    def __enter__(self) -> FeatureReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_whole(dsid: h5py.h5d.DatasetID) -> np.ndarray:
    """The whole dataset as a NumPy array, as ``h5py.Dataset(dsid)[()]`` returns it."""
    shape, dtype = dsid.shape, dsid.dtype
    if not shape or 0 in shape or dtype.kind not in "biufc":  # scalars, empty arrays, strings: h5py's own path
        return h5py.Dataset(dsid)[()]
    out = np.empty(shape, dtype=dtype)
    dsid.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
    return out


def _write_array(group: h5py.Group, utt_id: str, array: np.ndarray, source_sha256: str) -> None:
    array = np.asarray(array)
    if array.dtype == object:
        raise StoreError(f"{utt_id}: extractor returned an object array; features must be numeric arrays")
    ds = group.create_dataset(_check_utt_id(utt_id), data=array)
    ds.attrs["source_sha256"] = source_sha256
    # HDF5 has no checksum on contiguous data: without one a flipped bit on disk reads back as a wrong number
    ds.attrs["crc32"] = np.uint32(data_crc32(array))


def data_crc32(array: np.ndarray) -> int:
    """CRC-32 of an array's bytes (C order), as stored in each utterance's ``crc32`` attribute."""
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1)) if array.size else 0


class FeatureWriter:
    """Incremental, resumable, atomic writer for one feature file.

    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> meta = FileMeta("demo", "1", {"a": 1}, "h1", 2, 0.01, "audio")
    >>> out = Path(tempfile.mkdtemp()) / "demo.h5"
    >>> with FeatureWriter(out, meta) as w:
    ...     todo = w.plan({"u1": "sha-a", "u2": "sha-b"})
    ...     w.write_batch({u: np.zeros((3, 2), np.float32) for u in todo}, {"u1": "sha-a", "u2": "sha-b"})
    ...     w.commit({"u1": "sha-a", "u2": "sha-b"})
    >>> sorted(FeatureReader(out).keys()), sorted(todo)
    (['u1', 'u2'], ['u1', 'u2'])
    """

    def __init__(self, path: str | Path, meta: FileMeta):
        self.path = Path(path)
        self.meta = meta
        self.parts_dir = self.path.with_name(self.path.name + _PARTS_SUFFIX)
        self._lock_fd: int | None = None
        self._reused: dict[str, str] = {}  # utt_id -> checksum already valid in the final file
        self._in_parts: dict[str, tuple[Path, str]] = {}  # utt_id -> (shard, checksum)
        self._next_part = 0

    # --- locking ---------------------------------------------------------------------------
    def __enter__(self) -> FeatureWriter:
        if self.path.is_dir():  # refuse before any work is done, not at the final rename
            raise StoreError(f"{self.path}: is a directory, not a feature file; remove or rename it, or fix the "
                             "output path (dvc.yaml: outs / --out)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StoreLockedError(
                    f"{self.path}: another process is writing this feature file (lock {lock_path}); wait for it "
                    "to finish — two writers on one feature file are refused so that neither corrupts it"
                ) from None
            # The previous holder unlinks the lock file when it is done: a lock taken on that unlinked inode
            # would not exclude the next process (which creates a new file), so retry on the current one.
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._lock_fd = fd
        self._remove_stale_temps()
        return self

    def _remove_stale_temps(self) -> None:
        # Holding the lock, any temp file of this feature file belongs to a writer that was killed mid-write
        # (its own ``finally`` never ran); it never holds anything that is not also in a shard or the old file.
        for tmp in self.path.parent.glob(f".{self.path.name}.tmp*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if self.parts_dir.is_dir():
            for tmp in self.parts_dir.glob("*.tmp*"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    def __exit__(self, *exc) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
            with contextlib.suppress(FileNotFoundError):
                self.path.with_name(self.path.name + ".lock").unlink()

    # --- planning --------------------------------------------------------------------------
    def plan(self, wanted: dict[str, str]) -> list[str]:
        """Given ``{utt_id: source_sha256}`` for the current manifest, return the utterances to compute:
        those neither in the final file nor in a finished shard with the same checksum and config hash."""
        if self._lock_fd is None:
            raise RuntimeError("use FeatureWriter as a context manager (it holds the file's write lock)")
        self._reused = {}
        if self.path.exists():
            try:
                with _open_ro(self.path) as f:
                    old = FileMeta.read_attrs(f, self.path)
                    if old.config_hash == self.meta.config_hash and "utts" in f:
                        for k, d in f["utts"].items():
                            sha = str(d.attrs.get("source_sha256", ""))
                            if wanted.get(k) == sha:
                                self._reused[k] = sha
            except StoreError:
                # An unreadable final file is recomputed, never patched; it is only replaced at commit.
                self._reused = {}
        self._scan_parts(wanted)
        done = set(self._reused) | set(self._in_parts)
        return [u for u in wanted if u not in done]

    def _scan_parts(self, wanted: dict[str, str]) -> None:
        self._in_parts = {}
        if not self.parts_dir.is_dir():
            return
        for shard in sorted(self.parts_dir.glob("*.h5")):
            try:
                with _open_ro(shard) as f:
                    if str(f.attrs.get("config_hash", "")) != self.meta.config_hash:
                        continue
                    for k, d in f["utts"].items():
                        sha = str(d.attrs["source_sha256"])
                        if wanted.get(k) == sha and k not in self._reused:
                            self._in_parts[k] = (shard, sha)
            except (StoreError, KeyError, OSError):
                continue  # a shard that did not finish is ignored (it is deleted at commit)
            self._next_part = max(self._next_part, int(shard.stem) + 1 if shard.stem.isdigit() else 0)

    @property
    def n_resumed(self) -> int:
        return len(self._in_parts)

    @property
    def n_reused(self) -> int:
        return len(self._reused)

    # --- writing ---------------------------------------------------------------------------
    def write_batch(self, arrays: dict[str, np.ndarray], checksums: dict[str, str]) -> Path:
        """Persist one finished batch as its own shard (atomic); survives a kill of the process."""
        if not arrays:
            return self.parts_dir
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        shard = self.parts_dir / f"{self._next_part:06d}.h5"
        self._next_part += 1
        tmp = shard.with_suffix(f".tmp{os.getpid()}")
        try:
            with _h5_create(tmp) as f:
                f.attrs["config_hash"] = self.meta.config_hash
                g = f.create_group("utts")
                for utt_id, arr in arrays.items():
                    _write_array(g, utt_id, arr, checksums[utt_id])
            os.replace(tmp, shard)
        except OSError as e:
            needed = sum(np.asarray(a).nbytes for a in arrays.values()) + 4096 * (len(arrays) + 1)
            raise _write_error(shard, e, needed, f"the {len(self._in_parts)} utterance(s) finished before are kept "
                               f"in {self.parts_dir}") from None
        for utt_id in arrays:
            self._in_parts[utt_id] = (shard, checksums[utt_id])
        return shard

    def commit(self, wanted: dict[str, str]) -> dict[str, int]:
        """Merge previous file + shards into a new file holding exactly ``wanted``; atomically replace the final
        path; remove the shards. Raises if any wanted utterance has not been computed."""
        missing = [u for u in wanted if u not in self._reused and u not in self._in_parts]
        if missing:
            raise StoreError(
                f"{self.path}: {len(missing)} utterance(s) not computed yet (e.g. {missing[:3]}); "
                "the finished batches are kept — rerun the extraction to complete the file"
            )
        if not self._in_parts and set(self._reused) == set(wanted) and self._file_is_exact(wanted):
            # Nothing changed: keep the file (and its provenance: the code that computed it) byte for byte,
            # so DVC sees the same output and downstream stages stay cached.
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            return {"total": len(wanted), "reused": len(wanted), "computed": 0}
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        try:
            with _h5_create(tmp) as out:
                self.meta.write_attrs(out)
                g = out.create_group("utts")
                # Every utterance is copied in utt_id order whatever its source (the previous file or any shard),
                # so the bytes do not depend on batch completion order, resumes or increments: the same content
                # always gives the same file (DVC then sees no change).
                sources: dict[str, Path] = {u: self.path for u in self._reused if u in wanted}
                for utt_id, (shard, _) in self._in_parts.items():
                    if utt_id in wanted and utt_id not in sources:
                        sources[utt_id] = shard
                with _HandleCache() as handles:
                    for utt_id in sorted(sources):
                        src = handles.get(sources[utt_id])
                        src.copy(src["utts"][utt_id], g, name=utt_id)
                out.attrs["n_utts"] = len(g)
            os.replace(tmp, self.path)
        except OSError as e:
            kept = (f"{self.path} is unchanged" if self.path.exists() else f"{self.path} was not written") + \
                f" and the finished batches are kept in {self.parts_dir}"
            raise _write_error(self.path, e, self._commit_size(), kept) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        stats = {"total": len(wanted), "reused": len(self._reused), "computed": len(wanted) - len(self._reused)}
        return stats

    def _commit_size(self) -> int:
        """Bytes the merged file needs, about: the shards plus the reused part of the previous file."""
        size = sum(p.stat().st_size for p in {s for s, _ in self._in_parts.values()} if p.exists())
        return size + (self.path.stat().st_size if self._reused and self.path.is_file() else 0)

    def _file_is_exact(self, wanted: dict[str, str]) -> bool:
        with _open_ro(self.path) as f:
            return len(f["utts"]) == len(wanted)


class _HandleCache:
    """Read-only HDF5 handles by path, at most ``size`` open at once (a commit may merge thousands of shards)."""

    def __init__(self, size: int = 64):
        self.size = size
        self._open: dict[Path, h5py.File] = {}

    def get(self, path: Path) -> h5py.File:
        f = self._open.pop(path, None)
        if f is None:
            f = _open_ro(path)
            if len(self._open) >= self.size:
                oldest = next(iter(self._open))
                self._open.pop(oldest).close()
        self._open[path] = f  # re-inserted: most recently used last
        return f

    def __enter__(self) -> _HandleCache:
        return self

    def __exit__(self, *exc) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


class _Sink(io.RawIOBase):
    """The file object HDF5 writes a new file through (h5py's ``fileobj`` driver).

    When the disk fills up mid-write, HDF5 writing straight to a file is left with a handle it can neither flush
    nor close: it printed a page of tracebacks and then crashed the interpreter at exit (SIGSEGV). Here the first
    ``OSError`` (ENOSPC, EFBIG, EIO, ...) is recorded and the remaining writes are skipped, so HDF5 closes the file
    cleanly and :func:`_h5_create` raises that error; the half-written temp file is then deleted.
    """

    def __init__(self, path: Path):
        self._f = open(path, "w+b", buffering=0)  # noqa: SIM115 (closed in close())
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, b) -> int:
        return self._f.readinto(b)

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        n = len(view)
        if self.error is None:
            try:
                while view:
                    view = view[self._f.write(view):]
                return n
            except OSError as e:
                self.error = e
        self._f.seek(len(view), 1)  # pretend, so HDF5 finishes and closes; the file is discarded
        return n

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._f.truncate(size)
            except OSError as e:
                self.error = e
        return self._f.tell() if size is None else size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self._f.closed:
            try:
                if self.error is None:
                    os.fsync(self._f.fileno())  # the rename that follows must not publish unwritten data
            except OSError as e:
                self.error = e
            finally:
                self._f.close()
        super().close()


@contextlib.contextmanager
def _h5_create(tmp: Path):
    """A new HDF5 file at ``tmp`` (fsynced when the block ends). Raises the first ``OSError`` a write hit, after
    HDF5 closed cleanly; on any failure ``tmp`` is removed."""
    sink = _Sink(tmp)
    try:
        try:
            with h5py.File(sink, "w") as f:
                yield f
        except Exception as e:
            sink.close()
            # after a failed write HDF5 may trip over what it believes it wrote: report the write error itself
            if sink.error is not None:
                raise sink.error from e
            raise
        sink.close()
        if sink.error is not None:
            raise sink.error
    except BaseException:
        sink.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _write_error(path: Path, e: OSError, needed: int | None, kept: str) -> EmoflowError:
    """One line for a failed write: a full disk (needed vs free), or an unwritable place."""
    if is_disk_full(e):
        return disk_full_error(path, e, needed, kept)
    return StoreError(f"{path}: cannot write ({e.strerror or e}); {kept}; check that the folder is writable "
                      f"(about {human_bytes(needed)} needed) and rerun")


# --- inspection (``emoflow features ls | info | verify``) ---------------------------------------------------


def list_feature_files(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob("*.h5"))


def info(path: str | Path) -> dict[str, Any]:
    r = FeatureReader(path)
    try:
        m = r.meta
        shapes = [r._utts()[k].shape for k in r.keys()[:1]]
        return {
            "path": str(r.path),
            "extractor": m.extractor,
            "extractor_version": m.extractor_version,
            "config_hash": m.config_hash,
            "config": m.config,
            "dim": m.dim,
            "frame_shift": m.frame_shift,
            "input": m.input,
            "n_utts": len(r),
            "example_shape": list(shapes[0]) if shapes else None,
            "random_weights": m.random_weights,
            "provenance": m.provenance,
            "audio": m.audio,
            "code_version": m.code_version,
            "packages": m.packages,
            "size_bytes": r.path.stat().st_size,
        }
    finally:
        r.close()


def _check_utterance(utt_id: str, ds, dim: int | None) -> list[str]:
    if not isinstance(ds, h5py.Dataset):
        return [f"{utt_id}: not a dataset"]
    problems = []
    if "source_sha256" not in ds.attrs:
        problems.append(f"{utt_id}: no source_sha256 attribute")
    if not np.issubdtype(ds.dtype, np.number):
        return problems + [f"{utt_id}: non-numeric dtype {ds.dtype}"]
    if dim is not None and ds.ndim >= 1 and ds.shape[-1] != dim and ds.size:
        problems.append(f"{utt_id}: last dimension {ds.shape[-1]} != dim {dim}")
    arr = ds[()]
    if "crc32" in ds.attrs and data_crc32(arr) != int(ds.attrs["crc32"]):
        problems.append(f"{utt_id}: data checksum mismatch — the stored bytes changed after they were written "
                        "(disk or copy corruption)")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        problems.append(f"{utt_id}: contains NaN/inf")
    return problems


def verify(path: str | Path, expected: dict[str, str] | None = None) -> list[str]:
    """Check a feature file without recomputing anything. Returns a list of problems (empty = OK).

    Checks the file-level attributes, every array (readable, numeric, its CRC-32 when the file records one,
    finite, last dimension = ``dim``), and — when
    ``expected`` (``{utt_id: source_sha256}`` from the manifest) is given — that the file holds exactly those
    utterances with matching checksums.
    """
    problems: list[str] = []
    try:
        r = FeatureReader(path)
    except StoreError as e:
        return [str(e)]
    try:
        dim = r.meta.dim
        group = r._utts()
        for utt_id in group:
            try:
                problems += _check_utterance(utt_id, group[utt_id], dim)
            except (OSError, RuntimeError, KeyError) as e:  # a damaged object header or data block
                problems.append(f"{utt_id}: unreadable ({_first_line(e)})")
        if expected is not None:
            have = r.checksums()
            missing = sorted(set(expected) - set(have))
            extra = sorted(set(have) - set(expected))
            stale = sorted(u for u in set(expected) & set(have) if expected[u] != have[u])
            if missing:
                problems.append(f"{len(missing)} manifest utterance(s) missing, e.g. {missing[:3]}")
            if extra:
                problems.append(f"{len(extra)} utterance(s) not in the manifest, e.g. {extra[:3]}")
            if stale:
                problems.append(f"{len(stale)} utterance(s) computed from different audio/text, e.g. {stale[:3]}")
    finally:
        r.close()
    return problems

