"""ActivationStore: activations streamed to disk as sharded safetensors plus a JSON manifest.

Layout of a store folder::

    manifest.json              model id, sites, position, dtype, dataset fingerprint, record ids and
                               labels, code version, and the committed shards (rows, sha256)
    shard_00000.safetensors    {site: [rows, *site_shape], "record_index": [rows]}
    ...

A shard is written to a temporary file, renamed, and only then listed in the manifest (itself
replaced atomically), so an interrupted run leaves only whole, listed shards; :meth:`build` on the
same folder resumes after the last one. Writes happen on a background thread while the model
computes the next batches; at most two shards wait in memory. Loading checks every shard's size
and sha256 against the manifest and reads tensors lazily, one site and shard at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ._files import write_json_atomic

if TYPE_CHECKING:
    from .model import Workbench

MANIFEST = "manifest.json"
FORMAT = "workbench.activations/1"


class CorruptStore(RuntimeError):
    """A shard is missing, truncated or does not match its checksum."""


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("workbench")
    except PackageNotFoundError:
        return "unknown"


def fingerprint(prompts: Sequence[str], responses: Sequence[str] | None, ids: Sequence[str],
                labels: Sequence[int | None]) -> str:
    """sha256 of the dataset's content, order included."""
    blob = json.dumps([list(prompts), list(responses or []), list(ids), list(labels)], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class _ShardWriter:
    """Background thread: writes shards and commits them to the manifest in order."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest
        self.queue: queue.Queue = queue.Queue(maxsize=2)  # bounds memory: two shards in flight
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self._commit(*item)
                except BaseException as err:  # reported by put()/close() on the main thread
                    self.error = err

    def _commit(self, index: int, start: int, stop: int, tensors: dict[str, torch.Tensor]) -> None:
        name = f"shard_{index:05d}.safetensors"
        tmp = self.folder / f".{name}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.folder / name)
        self.manifest["shards"].append({
            "file": name, "start": start, "stop": stop, "rows": int(tensors["record_index"].shape[0]),
            "bytes": (self.folder / name).stat().st_size, "sha256": _sha256(self.folder / name),
        })
        write_json_atomic(self.folder / MANIFEST, self.manifest)

    def put(self, *item) -> None:
        if self.error:
            raise self.error
        self.queue.put(item)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error:
            raise self.error


class ActivationStore:
    """Read access to a finished (or partial) store folder.

    >>> store = ActivationStore("acts/harmful_vs_benign")
    >>> x = store.load("blocks.12.hook_resid_post")     # [rows, 576]
    >>> y = store.labels                                 # [rows], one label per row
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise FileNotFoundError(f"{self.path} is not an activation store (no {MANIFEST})")
        try:
            self.manifest = json.loads((self.path / MANIFEST).read_text())
        except json.JSONDecodeError as err:
            raise CorruptStore(f"{self.path / MANIFEST} is not valid JSON: {err}") from err
        if self.manifest.get("format") != FORMAT:
            raise CorruptStore(f"{self.path}: unknown format {self.manifest.get('format')!r}")
        if verify:
            self.verify()

    def verify(self) -> None:
        """Check every listed shard's size and sha256; raise :class:`CorruptStore` naming it."""
        for shard in self.manifest["shards"]:
            f = self.path / shard["file"]
            if not f.is_file():
                raise CorruptStore(f"shard {f} is missing")
            if f.stat().st_size != shard["bytes"]:
                raise CorruptStore(f"shard {f} is truncated ({f.stat().st_size} of {shard['bytes']} bytes)")
            if _sha256(f) != shard["sha256"]:
                raise CorruptStore(f"shard {f} does not match its sha256 (corrupted)")

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ActivationStore({str(self.path)!r}, model={m['model_id']!r}, position={m['position']!r}, "
                f"sites={len(m['sites'])}, rows={len(self)}, complete={m['complete']})")

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def __len__(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    def _open(self, shard: dict):
        try:
            return safe_open(str(self.path / shard["file"]), framework="pt")
        except Exception as err:
            raise CorruptStore(f"cannot read shard {shard['file']}: {err}") from err

    def iter_shards(self, site: str) -> Iterator[torch.Tensor]:
        """Yield one shard's ``[rows, *site_shape]`` tensor at a time (bounded memory)."""
        if site not in (*self.manifest["sites"], "record_index"):
            raise KeyError(f"site {site!r} is not in this store; it has {self.sites}")
        for shard in self.manifest["shards"]:
            with self._open(shard) as f:
                yield f.get_tensor(site)

    def load(self, site: str) -> torch.Tensor:
        """All rows of one site: ``[rows, *site_shape]``."""
        return torch.cat(list(self.iter_shards(site)))

    def __getitem__(self, site: str) -> torch.Tensor:
        return self.load(site)

    @property
    def record_index(self) -> torch.Tensor:
        """``[rows]`` index of the record each row came from."""
        return torch.cat(list(self.iter_shards("record_index")))

    @property
    def record_ids(self) -> list[str]:
        return list(self.manifest["records"]["ids"])

    @property
    def labels(self) -> torch.Tensor:
        """``[rows]`` label of each row's record (-1 where the record had none)."""
        labels = torch.tensor([-1 if v is None else v for v in self.manifest["records"]["labels"]])
        return labels[self.record_index]

    # ------------------------------------------------------------------ writing
    @classmethod
    def build(cls, path: str | os.PathLike, wb: Workbench, prompts: Sequence[str], sites: Sequence[str],
              position: str = "last", labels: Sequence[int | None] | None = None,
              ids: Sequence[str] | None = None, responses: Sequence[str] | None = None,
              batch_size: int = 8, shard_size: int = 256, dtype: torch.dtype = torch.float32,
              progress: bool = True) -> ActivationStore:
        """Capture ``sites`` of ``wb`` over ``prompts`` into the folder ``path``.

        ``shard_size`` prompts (rounded up to a multiple of ``batch_size``) go into each shard. If the
        folder holds an unfinished store of the same capture, it resumes; a different capture
        there is an error (nothing is overwritten).
        """
        if len(prompts) == 0:
            raise ValueError("no prompts: the dataset is empty")
        if shard_size < 1 or batch_size < 1:
            raise ValueError("batch_size and shard_size must be positive")
        ids = [str(i) for i in (ids if ids is not None else range(len(prompts)))]
        labels = list(labels) if labels is not None else [None] * len(prompts)
        if not len(ids) == len(labels) == len(prompts):
            raise ValueError(f"{len(prompts)} prompts, {len(ids)} ids, {len(labels)} labels: lengths differ")
        if len(set(ids)) != len(ids):
            raise ValueError("record ids are not unique")
        for s in sites:
            wb.site(s)  # fail on a bad site name before anything is written
        shard_size = -(-shard_size // batch_size) * batch_size  # batches never cross a shard boundary
        folder = Path(path)
        config = {
            "format": FORMAT, "model_id": wb.model_id, "backend": wb.backend.name, "sites": list(sites),
            "position": position, "batch_size": batch_size, "dtype": str(dtype).removeprefix("torch."), "shard_size": shard_size,
            "dataset_fingerprint": fingerprint(prompts, responses, ids, labels),
            "n_records": len(prompts),
        }
        manifest = cls._resume_or_start(folder, config)
        manifest.update(code_version=_code_version(), records={"ids": ids, "labels": labels})
        start = manifest["shards"][-1]["stop"] if manifest["shards"] else 0
        if start < len(prompts):
            writer = _ShardWriter(folder, manifest)
            try:
                cls._capture_into(writer, wb, prompts, responses, sites, position, start, batch_size,
                                  shard_size, dtype, progress, first_shard=len(manifest["shards"]))
            finally:
                writer.close()
        manifest["complete"] = True
        write_json_atomic(folder / MANIFEST, manifest)
        return cls(folder, verify=False)

    @staticmethod
    def _resume_or_start(folder: Path, config: dict) -> dict:
        if (folder / MANIFEST).is_file():
            old = ActivationStore(folder).manifest  # verifies the committed shards
            diff = [k for k in config if old.get(k) != config[k]]
            if diff:
                raise ValueError(f"{folder} holds a different capture ({', '.join(diff)} differ); "
                                 "choose another folder or delete it")
            listed = {s["file"] for s in old["shards"]}
            for f in folder.iterdir():  # shards written but never committed
                if f.name.startswith((".shard_", "shard_")) and f.name not in listed:
                    f.unlink()
            return old
        if folder.exists() and any(folder.iterdir()):
            raise ValueError(f"{folder} exists, is not empty and is not an activation store")
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {**config, "complete": False, "shards": []}
        write_json_atomic(folder / MANIFEST, manifest)
        return manifest

    @staticmethod
    def _capture_into(writer: _ShardWriter, wb: Workbench, prompts, responses, sites, position, start,
                      batch_size, shard_size, dtype, progress, first_shard: int) -> None:
        pending: list = []
        index, shard_start = first_shard, start

        def flush(stop: int) -> None:
            nonlocal index, shard_start, pending
            tensors = {s: torch.cat([p.acts[s] for p in pending]) for s in sites}
            tensors["record_index"] = torch.cat([p.acts.record_index for p in pending])
            writer.put(index, shard_start, stop, tensors)
            index, shard_start, pending = index + 1, stop, []

        for part in wb.iter_capture(prompts, sites, position, batch_size, responses, start=start,
                                    dtype=dtype, progress=progress):
            pending.append(part)
            stop = min(part.start + batch_size, len(prompts))
            if stop - shard_start >= shard_size or stop == len(prompts):
                flush(stop)
