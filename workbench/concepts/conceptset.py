"""``ConceptSet``: unit directions at named sites, each with a label, a score and provenance.

A concept is one unit vector at one site (a TransformerLens hook name such as
``blocks.15.hook_resid_post``), plus what a person needs to judge and reuse it: a label, a score
from the method that found it, provenance (method, model id, dataset fingerprint, parameters),
a ``selected`` flag ("use for ablation") and free JSON metadata (autointerp label, detection
scores, SAE latent index, notes).

Every discovery method (:mod:`workbench.concepts.diffmeans`, :mod:`~workbench.concepts.pca`,
:mod:`~workbench.concepts.sae`) returns a ``ConceptSet``; the labeling widget edits one; the
interventions take ``cs.directions(site)`` (``[k, d]``) or the orthonormal ``cs.basis(site)``.

File format: one ``.safetensors`` file. Tensors ``directions/{site}`` ``[k, d]`` (float32, one row
per concept at that site, in set order); the header metadata key ``conceptset`` holds the JSON
manifest (format, concepts with their site, row, label, score, selected, provenance, meta). No
pickle. ``ConceptSet.load(path, wb=wb)`` checks every site's width against the model.

>>> cs = diff_means(store, sites=["blocks.12.hook_resid_post"])
>>> cs = cs.union(pca(store, k=5)).orthonormalize()
>>> cs.save("concepts/harm.safetensors")
>>> ConceptSet.load("concepts/harm.safetensors", wb=wb).directions("blocks.12.hook_resid_post")
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import torch
from safetensors import safe_open
from safetensors.torch import save_file

if TYPE_CHECKING:
    from ..model import Workbench

FORMAT = "workbench.conceptset/1"
_KEY = "conceptset"


class WidthMismatch(ValueError):
    """A concept set's direction width does not match the model's width at that site."""


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("workbench")
    except PackageNotFoundError:
        return "unknown"


@overload
def _jsonable(obj: Mapping) -> dict[str, Any]: ...
@overload
def _jsonable(obj: object) -> Any: ...
def _jsonable(obj: Any) -> Any:
    """Plain JSON types only (tensors -> lists, numpy scalars -> floats); raises on anything else."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):
        return obj.item()  # numpy scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN / inf
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a ConceptSet (JSON types only)")


def provenance(method: str, model_id: str | None = None, dataset_fingerprint: str | None = None,
               params: Mapping | None = None) -> dict:
    """The provenance dict every discovery method attaches to its concepts."""
    return {"method": method, "model_id": model_id, "dataset_fingerprint": dataset_fingerprint,
            "params": _jsonable(dict(params or {})), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "code_version": _code_version()}


@dataclass
class Concept:
    """One unit direction at one site.

    Attributes:
        name: unique within a set, e.g. ``"pca/blocks.15.hook_resid_post/3"``.
        site: TransformerLens hook name (``blocks.15.hook_resid_post``, ``blocks.3.attn.hook_z[2]``).
        direction: ``[d]`` float32, unit norm (normalized on construction).
        label: human-readable meaning ("" until someone labels it).
        score: the discovering method's statistic (explained variance ratio, effect size, latent
            difference, attribution ...), ``None`` where there is none.
        selected: "use for ablation": the person's pick.
        provenance: ``{"method", "model_id", "dataset_fingerprint", "params", ...}``.
        meta: anything else JSON-able (``autointerp``, ``sae_latent``, notes).
    """

    name: str
    site: str
    direction: torch.Tensor
    label: str = ""
    score: float | None = None
    selected: bool = False
    provenance: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        d = torch.as_tensor(self.direction).detach().to("cpu", torch.float32).flatten()
        n = float(d.double().norm())
        if not math.isfinite(n) or n == 0.0:
            raise ValueError(f"concept {self.name!r}: direction has zero or non-finite norm")
        self.direction = (d.double() / n).float()
        if self.score is not None:
            self.score = float(self.score)

    @property
    def width(self) -> int:
        return int(self.direction.shape[0])

    @property
    def method(self) -> str | None:
        return self.provenance.get("method")

    def __repr__(self) -> str:
        score = "None" if self.score is None else f"{self.score:.4g}"
        mark = " [selected]" if self.selected else ""
        return f"Concept({self.name!r}, site={self.site!r}, d={self.width}, label={self.label!r}, score={score}){mark}"

    def copy(self) -> Concept:
        return Concept(self.name, self.site, self.direction.clone(), self.label, self.score, self.selected,
                       copy.deepcopy(self.provenance), copy.deepcopy(self.meta))

    def to_json(self) -> dict:
        return _jsonable({"name": self.name, "site": self.site, "label": self.label, "score": self.score,
                          "selected": self.selected, "provenance": self.provenance, "meta": self.meta})


class ConceptSet:
    """An ordered collection of :class:`Concept` (names unique), possibly over several sites."""

    def __init__(self, concepts: Iterable[Concept] = (), meta: Mapping | None = None):
        self.concepts: list[Concept] = []
        self.meta: dict = dict(meta or {})
        for c in concepts:
            self.add(c)

    # ------------------------------------------------------------------ container
    def add(self, concept: Concept) -> Concept:
        """Append a concept; a clashing name gets a ``#2``, ``#3`` ... suffix. Widths per site must agree."""
        have = self.widths()
        if concept.site in have and have[concept.site] != concept.width:
            raise WidthMismatch(f"concept {concept.name!r} at {concept.site!r} has width {concept.width}, "
                                f"but this set's directions there have width {have[concept.site]}")
        names = {c.name for c in self.concepts}
        if concept.name in names:
            i = 2
            while f"{concept.name}#{i}" in names:
                i += 1
            concept.name = f"{concept.name}#{i}"
        self.concepts.append(concept)
        return concept

    def __len__(self) -> int:
        return len(self.concepts)

    def __iter__(self) -> Iterator[Concept]:
        return iter(self.concepts)

    @overload
    def __getitem__(self, key: slice) -> ConceptSet: ...
    @overload
    def __getitem__(self, key: int | str) -> Concept: ...
    def __getitem__(self, key: int | str | slice) -> Concept | ConceptSet:
        if isinstance(key, slice):
            return ConceptSet([c.copy() for c in self.concepts[key]], self.meta)
        if isinstance(key, str):
            for c in self.concepts:
                if c.name == key:
                    return c
            raise KeyError(f"no concept named {key!r}; names: {self.names[:10]}{' ...' if len(self) > 10 else ''}")
        return self.concepts[key]

    def __add__(self, other: ConceptSet) -> ConceptSet:
        return self.union(other)

    __or__ = __add__

    def __repr__(self) -> str:
        sites = {s: sum(c.site == s for c in self.concepts) for s in self.sites}
        methods = sorted({c.method or "?" for c in self.concepts})
        return (f"ConceptSet({len(self)} concepts, {sum(c.selected for c in self)} selected, "
                f"sites={sites}, methods={methods})")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    @property
    def sites(self) -> list[str]:
        """Sites in order of first appearance."""
        return list(dict.fromkeys(c.site for c in self.concepts))

    @property
    def model_ids(self) -> list[str]:
        return sorted({m for c in self.concepts if (m := c.provenance.get("model_id"))})

    def widths(self) -> dict[str, int]:
        return {c.site: c.width for c in self.concepts}

    def index(self, name: str) -> int:
        return self.names.index(name)

    # ------------------------------------------------------------------ views for interventions
    def directions(self, site: str, selected_only: bool = False) -> torch.Tensor:
        """``[k, d]`` float32 unit directions at ``site``, in set order (``k`` may be 0).

        ``selected_only`` keeps the concepts marked "use for ablation". The rows are not
        orthogonalized: use :meth:`basis` for a projection."""
        rows = [c.direction for c in self.concepts if c.site == site and (c.selected or not selected_only)]
        if not rows:
            if site not in self.sites:
                raise KeyError(f"no concepts at site {site!r}; this set has {self.sites}")
            return torch.zeros(0, self.widths()[site])
        return torch.stack(rows)

    def basis(self, site: str, selected_only: bool = False, tol: float = 1e-6) -> torch.Tensor:
        """``[r, d]`` orthonormal rows spanning the directions at ``site`` (QR, as CAFT does;
        ``r`` = rank). Projecting out: ``x - (x @ Q.T) @ Q``."""
        q, _ = _qr_rows(self.directions(site, selected_only).double(), tol)
        return q.float()

    def for_ablation(self) -> ConceptSet:
        """The concepts marked ``selected`` ("use for ablation")."""
        return self.select(selected=True)

    # ------------------------------------------------------------------ set operations
    def select(self, which: Iterable[int | str] | Callable[[Concept], bool] | None = None, *,
               site: str | Sequence[str] | None = None, method: str | None = None,
               selected: bool | None = None, labelled: bool | None = None) -> ConceptSet:
        """A new set (copies) with the concepts that pass every given filter.

        ``which``: indices / names (kept in that order) or a predicate; ``site``: one or several
        sites; ``method``: provenance method; ``selected``: the ablation flag; ``labelled``: has a
        non-empty label."""
        if which is None:
            chosen = list(self.concepts)
        elif callable(which):
            chosen = [c for c in self.concepts if which(c)]
        else:
            chosen = [self[w] if isinstance(w, str) else self.concepts[w] for w in which]
        sites = {site} if isinstance(site, str) else set(site) if site is not None else None
        chosen = [c for c in chosen
                  if (sites is None or c.site in sites) and (method is None or c.method == method)
                  and (selected is None or c.selected == selected)
                  and (labelled is None or bool(c.label.strip()) == labelled)]
        return ConceptSet([c.copy() for c in chosen], self.meta)

    def union(self, *others: ConceptSet) -> ConceptSet:
        """All concepts of ``self`` then of ``others`` (copies; clashing names get a suffix).
        Raises :class:`WidthMismatch` if two sets disagree on a site's width."""
        out = ConceptSet([c.copy() for c in self.concepts], self.meta)
        for other in others:
            for c in other:
                out.add(c.copy())
        return out

    def orthonormalize(self, tol: float = 1e-6) -> ConceptSet:
        """A new set whose directions at each site are orthonormal (QR in set order, as CAFT).

        The first concept at a site keeps its direction; each later one becomes its component
        orthogonal to those before it (sign kept). A concept that is (numerically) in the span of
        the earlier ones is dropped with a warning."""
        out = ConceptSet(meta=self.meta)
        new: dict[int, torch.Tensor] = {}
        for site in self.sites:
            idx = [i for i, c in enumerate(self.concepts) if c.site == site]
            q, keep = _qr_rows(torch.stack([self.concepts[i].direction for i in idx]).double(), tol)
            dropped = [self.concepts[idx[j]].name for j in range(len(idx)) if j not in keep]
            if dropped:
                warnings.warn(f"orthonormalize: dropped {dropped} at {site!r} (in the span of earlier concepts)", stacklevel=2)
            for row, j in enumerate(keep):
                new[idx[j]] = q[row].float()
        for i, c in enumerate(self.concepts):
            if i in new:
                c2 = c.copy()
                c2.direction = new[i]
                c2.meta["orthonormalized"] = True
                out.add(c2)
        return out

    def to_frame(self):
        """A pandas summary: name, site, method, label, score, selected, autointerp label / AUROC."""
        import pandas as pd

        rows = []
        for c in self.concepts:
            ai = c.meta.get("autointerp") or {}
            det = ai.get("detection") or {}
            rows.append({"name": c.name, "site": c.site, "method": c.method, "label": c.label, "score": c.score,
                         "selected": c.selected, "autointerp": ai.get("label"), "auroc": det.get("auroc")})
        return pd.DataFrame(rows, columns=["name", "site", "method", "label", "score", "selected",
                                           "autointerp", "auroc"])

    # ------------------------------------------------------------------ model checks
    def check(self, wb: Workbench) -> ConceptSet:
        """Refuse a set that does not fit ``wb``: unknown sites and wrong widths raise
        (:class:`~workbench.sites.UnknownSite`, :class:`WidthMismatch`) with the model's numbers.
        A set made on another model id of the right width only warns (a fine-tuned copy keeps the
        base model's widths). Returns ``self``."""
        for site, width in self.widths().items():
            shape = tuple(wb.site_shape(site))  # raises UnknownSite listing the closest names
            expected = math.prod(shape)
            if width != expected:
                made = ", ".join(sorted({str(c.provenance.get("model_id")) for c in self.concepts
                                         if c.site == site and c.provenance.get("model_id")})) or "an unrecorded model"
                how = "" if len(shape) == 1 else f" (site shape {shape} flattened)"
                raise WidthMismatch(
                    f"ConceptSet directions at {site!r} have width {width}, but model {wb.model_id!r} has "
                    f"width {expected} there{how} (d_model={wb.d_model}). The set was made on {made}; "
                    "it cannot be applied to this model.")
        others = [m for m in self.model_ids if m != wb.model_id]
        if others:
            warnings.warn(f"ConceptSet was made on {others}, applying it to {wb.model_id!r} (same widths)", stacklevel=2)
        return self

    # ------------------------------------------------------------------ files
    def to_manifest(self) -> dict:
        rows: dict[str, int] = {}
        concepts = []
        for c in self.concepts:
            entry = c.to_json()
            entry["row"] = rows.get(c.site, 0)
            rows[c.site] = entry["row"] + 1
            concepts.append(entry)
        return {"format": FORMAT, "code_version": _code_version(), "meta": _jsonable(self.meta),
                "widths": self.widths(), "concepts": concepts}

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.safetensors`` file (tensors per site + JSON manifest in the header), atomically."""
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        manifest = self.to_manifest()
        tensors = {f"directions/{s}": self.directions(s).contiguous() for s in self.sites}
        if not tensors:  # safetensors needs at least a valid dict; keep an empty marker
            tensors = {"empty": torch.zeros(0)}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata={_KEY: json.dumps(manifest)})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, wb=None) -> ConceptSet:
        """Read a file written by :meth:`save`; with ``wb``, :meth:`check` it against the model."""
        path = Path(path)
        if not path.is_file() and path.with_name(path.name + ".safetensors").is_file():
            path = path.with_name(path.name + ".safetensors")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = (f.metadata() or {}).get(_KEY)
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except FileNotFoundError:
            raise
        except Exception as err:
            raise ValueError(f"{path} is not a readable ConceptSet file: {err}") from err
        if header is None:
            raise ValueError(f"{path} has no '{_KEY}' manifest: not a ConceptSet file")
        manifest = json.loads(header)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown ConceptSet format {manifest.get('format')!r}")
        out = cls(meta=manifest.get("meta") or {})
        for e in manifest["concepts"]:
            mat = tensors.get(f"directions/{e['site']}")
            if mat is None or e["row"] >= mat.shape[0]:
                raise ValueError(f"{path}: concept {e['name']!r} has no row {e['row']} at {e['site']!r}")
            out.add(Concept(e["name"], e["site"], mat[e["row"]], e.get("label") or "", e.get("score"),
                            bool(e.get("selected")), e.get("provenance") or {}, e.get("meta") or {}))
        if wb is not None:
            out.check(wb)
        return out


def _qr_rows(rows: torch.Tensor, tol: float) -> tuple[torch.Tensor, list[int]]:
    """Orthonormalize ``rows`` ``[k, d]`` in order (QR of the transpose, signs chosen so that each
    output row has a positive dot product with its input). Returns ``(q [r, d], kept indices)``;
    a row whose part orthogonal to the earlier rows has norm ``<= tol`` is dropped."""
    if rows.shape[0] == 0:
        return rows, []
    q, r = torch.linalg.qr(rows.T)
    diag = r.diagonal()
    if bool((diag.abs() > tol).all()):
        return q.T * torch.sign(diag).unsqueeze(1), list(range(rows.shape[0]))
    # Rank-deficient: Gram-Schmidt (twice, for stability) in order, skipping dependent rows.
    basis: list[torch.Tensor] = []
    keep: list[int] = []
    for j, v in enumerate(rows):
        v = v.clone()
        for _ in range(2):
            for b in basis:
                v -= (v @ b) * b
        n = float(v.norm())
        if n > tol:
            basis.append(v / n)
            keep.append(j)
    return torch.stack(basis) if basis else rows[:0], keep
