"""Interventions: small objects the wrapper installs as hooks on named sites.

Each one has ``as_hooks(wb) -> {site: fn}`` (so ``with wb.hooks(obj):`` installs it), a clear
``repr``, ``parameters()`` (trainable ones only where it has any), and ``save(path)`` /
``load(path)`` as a folder holding ``intervention.json`` (type, config, manifest) and
``tensors.safetensors``; never pickle.

* :class:`Ablate` -- directional ablation ``x - (x Q) Q^T`` (or mean ablation
  ``x - ((x - mu) Q) Q^T``) with ``Q`` orthonormalised by QR; CAFT's projection.
* :class:`Steer` -- activation addition ``x + alpha * direction``.
* :class:`HeadScale` / :class:`HeadBias` -- LoFIT's per-head ``(1 + A_h) * z_h + v_h`` on
  ``blocks.{l}.attn.hook_z`` (before ``o_proj``; ``z`` carries every *query* head, so it works for
  grouped-query attention), with ``nn.Parameter`` s for the chosen heads only.
* :class:`Compose` -- several interventions at once.

>>> abl = Ablate({"blocks.10.hook_resid_post": refusal_dir[None]})     # [k=1, d_model]
>>> with wb.hooks(abl):
...     wb.generate(["How do I pick a lock?"])

Position masks: ``positions="all"`` acts on every token (what CAFT does); a mask name (``"prompt"``,
``"response"``, ``"post_instruction"``) or a ``[batch, pos]`` bool tensor restricts it. Named masks
come from the batch being run: ``with abl.bind(batch): wb.forward(batch, hooks=abl)``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

FORMAT = "workbench.intervention"
FORMAT_VERSION = 1
CONFIG_FILE = "intervention.json"
TENSORS_FILE = "tensors.safetensors"
MASKS = ("prompt", "response", "post_instruction", "attention")

_REGISTRY: dict[str, type[Intervention]] = {}


def _version() -> str:
    try:
        from . import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


class Intervention(nn.Module):
    """Base class. Subclasses implement :meth:`as_hooks`, :meth:`_config`, :meth:`_tensors` and
    :meth:`_from_saved`."""

    model_id: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    # ------------------------------------------------------------------ hooks
    def as_hooks(self, wb) -> dict:
        raise NotImplementedError

    def check(self, wb) -> None:
        """Raise a clear error if this intervention does not fit ``wb``'s model."""
        self.as_hooks(wb)

    def _check_model_id(self, wb) -> None:
        if self.model_id and getattr(wb, "model_id", None) and self.model_id != wb.model_id:
            warnings.warn(f"{type(self).__name__} was made for {self.model_id!r} but is applied to "
                          f"{wb.model_id!r}", stacklevel=3)

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ files
    def _config(self) -> dict:
        raise NotImplementedError

    def _tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def _from_saved(cls, config: dict, tensors: dict[str, torch.Tensor]) -> Intervention:
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Write ``path/intervention.json`` + ``path/tensors.safetensors``; return ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in self._tensors().items()}
        save_file(tensors, str(path / TENSORS_FILE), metadata={"format": FORMAT, "type": type(self).__name__})
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "type": type(self).__name__,
                    "model_id": self.model_id, "workbench_version": _version(),
                    "config": self._config(),
                    "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                                for k, v in tensors.items()}}
        (path / CONFIG_FILE).write_text(json.dumps(manifest, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Intervention:
        """Load a saved intervention; on a subclass, the saved type must match."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a saved intervention (no {CONFIG_FILE})")
        manifest = json.loads((path / CONFIG_FILE).read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path / CONFIG_FILE}: not a workbench intervention file")
        kind = manifest["type"]
        if kind == "Compose" and cls in (Intervention, _REGISTRY["Compose"]):
            return _REGISTRY["Compose"].load(path)
        if kind not in _REGISTRY:
            raise ValueError(f"{path}: unknown intervention type {kind!r}; known: {sorted(_REGISTRY)}")
        target = _REGISTRY[kind]
        if cls is not Intervention and not issubclass(target, cls):
            raise TypeError(f"{path} holds a {kind}, not a {cls.__name__}")
        obj = target._from_saved(manifest["config"], load_file(str(path / TENSORS_FILE)))
        obj.model_id = manifest.get("model_id")
        return obj


def load_intervention(path: str | Path) -> Intervention:
    """Load any saved intervention (the type is read from its ``intervention.json``)."""
    return Intervention.load(path)


# ---------------------------------------------------------------------- positions
class _Positional:
    """Shared position-mask handling for :class:`Ablate` and :class:`Steer`."""

    positions: str | torch.Tensor
    _bound: torch.Tensor | None = None

    def _init_positions(self, positions) -> None:
        if isinstance(positions, torch.Tensor):
            if positions.dim() != 2:
                raise ValueError(f"a positions mask must be [batch, pos], got shape {tuple(positions.shape)}")
            positions = positions.bool()
        elif positions != "all" and positions not in MASKS:
            raise ValueError(f"positions must be 'all', one of {MASKS} or a [batch, pos] bool tensor; "
                             f"got {positions!r}")
        self.positions = positions
        self._bound = None

    @contextmanager
    def bind(self, batch) -> Iterator:
        """Use ``batch``'s masks (a :class:`workbench.chat.ChatBatch`) for a named ``positions``."""
        if isinstance(self.positions, str) and self.positions != "all":
            mask = (batch.attention_mask.bool() if self.positions == "attention"
                    else getattr(batch, f"{self.positions}_mask"))
        else:
            mask = None
        old, self._bound = self._bound, mask
        try:
            yield self
        finally:
            self._bound = old

    def _mask(self, x: torch.Tensor) -> torch.Tensor | None:
        if isinstance(self.positions, torch.Tensor):
            mask = self.positions
        elif self.positions == "all":
            return None
        elif self._bound is None:
            raise RuntimeError(f"{type(self).__name__}(positions={self.positions!r}) needs the batch's masks: "
                               f"run inside `with intervention.bind(batch):`")
        else:
            mask = self._bound
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"{type(self).__name__}: positions mask has shape {tuple(mask.shape)} but the "
                             f"activations are [batch, pos] = {tuple(x.shape[:2])} (generation with a KV cache "
                             f"sees one new position per step: use positions='all' there)")
        return mask.to(x.device)

    def _positions_config(self):
        return self.positions if isinstance(self.positions, str) else "tensor"

    def _positions_repr(self) -> str:
        return repr(self.positions) if isinstance(self.positions, str) else f"mask{tuple(self.positions.shape)}"


def _site_width(wb, site: str) -> int:
    """Width of the last (flattened) axis a direction acts on at ``site``."""
    return math.prod(wb.site_shape(site))


def _width_error(kind: str, site: str, got: int, wb) -> ValueError:
    return ValueError(f"{kind}: the vectors for site {site!r} have width {got}, but that site has width "
                      f"{_site_width(wb, site)} on {wb.model_id!r} (d_model={wb.d_model}, n_heads={wb.n_heads}, "
                      f"d_head={wb.d_head}); were they computed on another model?")


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``[batch, pos, *shape]`` -> ``[batch, pos, prod(shape)]`` (a view)."""
    return x if x.dim() == 3 else x.reshape(*x.shape[:2], -1)


# ---------------------------------------------------------------------- Ablate
def orthonormalize(directions: torch.Tensor, site: str = "") -> torch.Tensor:
    """``[k, d]`` directions -> ``Q`` ``[d, k]`` with orthonormal columns spanning them (QR in float64).
    Linearly dependent directions are an error."""
    if directions.dim() == 1:
        directions = directions[None]
    if directions.dim() != 2 or directions.shape[0] == 0:
        raise ValueError(f"directions for {site!r} must be [k, d] with k >= 1, got {tuple(directions.shape)}")
    if directions.shape[0] > directions.shape[1]:
        raise ValueError(f"{site!r}: {directions.shape[0]} directions in {directions.shape[1]} dimensions")
    if not torch.isfinite(directions).all():
        raise ValueError(f"directions for {site!r} contain NaN or inf")
    q, r = torch.linalg.qr(directions.detach().to(torch.float64).T)
    diag = r.diagonal().abs()
    if diag.max() == 0 or (diag < 1e-8 * diag.max()).any():
        rank = int((diag >= 1e-8 * diag.max()).sum()) if diag.max() > 0 else 0
        raise ValueError(f"the {directions.shape[0]} directions for {site!r} are linearly dependent (rank {rank})")
    return q.to(torch.float32)


class Ablate(Intervention, _Positional):
    """Project directions out of sites: ``x <- x - (x Q) Q^T``, ``Q`` = QR(directions^T).

    Args:
        directions: ``{site: Tensor[k, d]}`` (a ``[d]`` vector counts as ``k = 1``), or any object
            with a ``directions(site) -> [k, d]`` method (then ``sites`` names the sites, or the
            object's ``.sites`` does).
        mean: optional ``{site: Tensor[d]}``: mean ablation ``x - ((x - mu) Q) Q^T`` sets the
            component along ``Q`` to the mean's instead of zero.
        positions: ``"all"`` (default), a mask name (see :meth:`bind`) or a ``[batch, pos]`` mask.
        sites: with a concept object, the sites to ablate at.

    For ``blocks.{l}.attn.hook_z`` (all heads) directions have width ``n_heads * d_head``; for a head
    site ``...hook_z[h]``, ``d_head``.
    """

    def __init__(self, directions, mean: Mapping[str, torch.Tensor] | None = None, positions="all",
                 sites: Sequence[str] | None = None, model_id: str | None = None):
        super().__init__()
        if isinstance(directions, Mapping):
            raw = dict(directions)
            if sites is not None:
                raw = {s: raw[s] for s in sites}
        elif hasattr(directions, "directions"):
            sites = sites if sites is not None else getattr(directions, "sites", None)
            if not sites:
                raise ValueError("Ablate(concepts): pass sites=[...] (the concept object has no .sites)")
            raw = {s: directions.directions(s) for s in sites}
        else:
            raise TypeError("Ablate needs {site: Tensor[k, d]} or an object with .directions(site); "
                            f"got {type(directions).__name__}")
        if not raw:
            raise ValueError("Ablate: no sites given")
        self.raw = {s: torch.as_tensor(d).detach().float().reshape(-1, torch.as_tensor(d).shape[-1]).cpu()
                    for s, d in raw.items()}
        self.Q = {s: orthonormalize(d, s) for s, d in self.raw.items()}
        self.mean = None
        if mean is not None:
            missing = set(self.raw) - set(mean)
            if missing:
                raise ValueError(f"Ablate: mean given but missing for sites {sorted(missing)}")
            self.mean = {s: torch.as_tensor(mean[s]).detach().float().reshape(-1).cpu() for s in self.raw}
            for s, mu in self.mean.items():
                if mu.shape[0] != self.Q[s].shape[0]:
                    raise ValueError(f"Ablate: mean for {s!r} has width {mu.shape[0]}, directions {self.Q[s].shape[0]}")
        self._init_positions(positions)
        self._cache: dict = {}
        self.model_id = model_id

    @property
    def sites(self) -> list[str]:
        return list(self.raw)

    def __repr__(self) -> str:
        parts = ", ".join(f"{s!r}: k={q.shape[1]}" for s, q in self.Q.items())
        kind = "mean" if self.mean is not None else "zero"
        d = next(iter(self.Q.values())).shape[0]
        return f"Ablate({{{parts}}}, d={d}, {kind}-ablation, positions={self._positions_repr()})"

    def _q(self, site: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = (site, x.device, x.dtype)
        if key not in self._cache:
            mu = None if self.mean is None else self.mean[site].to(x.device, x.dtype)
            self._cache[key] = (self.Q[site].to(x.device, x.dtype), mu)
        return self._cache[key]

    def apply(self, x: torch.Tensor, site: str) -> torch.Tensor:
        """The ablation on one tensor ``[batch, pos, *shape]`` (``[..., d]`` for other shapes)."""
        Q, mu = self._q(site, x)
        flat = _flat(x) if x.dim() >= 3 else x
        centred = flat if mu is None else flat - mu
        out = flat - (centred @ Q) @ Q.T
        if x.dim() >= 3:
            mask = self._mask(x)
            if mask is not None:
                out = torch.where(mask[..., None], out, flat)
        return out.reshape(x.shape)

    def as_hooks(self, wb) -> dict:
        self._check_model_id(wb)
        for site, q in self.Q.items():
            wb.site(site)
            if q.shape[0] != _site_width(wb, site):
                raise _width_error("Ablate", site, q.shape[0], wb)
        return {site: (lambda x, name, site=site: self.apply(x, site)) for site in self.Q}

    def _config(self) -> dict:
        return {"sites": self.sites, "positions": self._positions_config(), "mean": self.mean is not None}

    def _tensors(self) -> dict:
        out = {f"directions/{s}": d for s, d in self.raw.items()}
        if self.mean is not None:
            out.update({f"mean/{s}": m for s, m in self.mean.items()})
        if isinstance(self.positions, torch.Tensor):
            out["positions"] = self.positions.to(torch.uint8)
        return out

    @classmethod
    def _from_saved(cls, config, tensors):
        mean = {s: tensors[f"mean/{s}"] for s in config["sites"]} if config["mean"] else None
        positions = tensors["positions"].bool() if config["positions"] == "tensor" else config["positions"]
        return cls({s: tensors[f"directions/{s}"] for s in config["sites"]}, mean=mean, positions=positions)


# ---------------------------------------------------------------------- Steer
class Steer(Intervention, _Positional):
    """Activation addition at one site: ``x <- x + alpha * direction`` (``direction`` unit-normed
    first with ``normalize=True``)."""

    def __init__(self, site: str, direction: torch.Tensor, alpha: float = 1.0, positions="all",
                 normalize: bool = False, model_id: str | None = None):
        super().__init__()
        direction = torch.as_tensor(direction).detach().float().cpu()
        if direction.dim() != 1:
            raise ValueError(f"Steer: direction must be a vector [d], got shape {tuple(direction.shape)}")
        if normalize:
            norm = direction.norm()
            if norm == 0:
                raise ValueError("Steer: cannot normalize a zero direction")
            direction = direction / norm
        self.site_name, self.direction, self.alpha, self.normalize = site, direction, float(alpha), normalize
        self._init_positions(positions)
        self.model_id = model_id

    def __repr__(self) -> str:
        return (f"Steer({self.site_name!r}, d={self.direction.shape[0]}, |direction|={self.direction.norm():.3g}, "
                f"alpha={self.alpha:g}, positions={self._positions_repr()})")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        flat = _flat(x)
        add = (self.alpha * self.direction).to(x.device, x.dtype)
        mask = self._mask(x)
        out = flat + add if mask is None else flat + mask[..., None].to(x.dtype) * add
        return out.reshape(x.shape)

    def as_hooks(self, wb) -> dict:
        self._check_model_id(wb)
        wb.site(self.site_name)
        if self.direction.shape[0] != _site_width(wb, self.site_name):
            raise _width_error("Steer", self.site_name, self.direction.shape[0], wb)
        return {self.site_name: lambda x, name: self.apply(x)}

    def _config(self) -> dict:
        return {"site": self.site_name, "alpha": self.alpha, "positions": self._positions_config(),
                "normalize": self.normalize}

    def _tensors(self) -> dict:
        out = {"direction": self.direction}
        if isinstance(self.positions, torch.Tensor):
            out["positions"] = self.positions.to(torch.uint8)
        return out

    @classmethod
    def _from_saved(cls, config, tensors):
        positions = tensors["positions"].bool() if config["positions"] == "tensor" else config["positions"]
        obj = cls(config["site"], tensors["direction"], config["alpha"], positions=positions)
        obj.normalize = config["normalize"]  # the saved direction is already normalized where asked
        return obj


# ---------------------------------------------------------------------- LoFIT heads
def _normalize_heads(layers, heads, n_heads: int) -> dict[int, list[int]]:
    if heads is None:
        if layers is None:
            raise ValueError("give layers (all their heads are used) or heads")
        return {int(l): list(range(n_heads)) for l in layers}
    if isinstance(heads, Mapping):
        pairs = [(int(l), int(h)) for l, hs in heads.items() for h in hs]
    else:
        pairs = [(int(l), int(h)) for l, h in heads]
    out: dict[int, list[int]] = {}
    for l, h in pairs:
        if not 0 <= h < n_heads:
            raise ValueError(f"head {h} of layer {l} is out of range (n_heads={n_heads})")
        if layers is not None and l not in set(int(x) for x in layers):
            raise ValueError(f"head ({l}, {h}) is in layer {l}, which is not among layers={list(layers)}")
        out.setdefault(l, [])
        if h in out[l]:
            raise ValueError(f"head ({l}, {h}) given twice")
        out[l].append(h)
    if not out:
        raise ValueError("no heads given")
    return {l: sorted(hs) for l, hs in sorted(out.items())}


class _HeadParams(Intervention):
    """Per-head vectors on ``blocks.{l}.attn.hook_z`` for chosen heads (LoFIT)."""

    symbol = "?"
    default_init_std = 0.0

    def __init__(self, layers: Iterable[int] | None, n_heads: int, d_head: int, heads=None,
                 init_std: float | None = None, seed: int | None = None, model_id: str | None = None):
        super().__init__()
        self.n_heads, self.d_head = int(n_heads), int(d_head)
        self.heads = _normalize_heads(None if layers is None else list(layers), heads, self.n_heads)
        self.init_std = self.default_init_std if init_std is None else float(init_std)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.params = nn.ParameterDict()
        for l, hs in self.heads.items():
            init = torch.randn(len(hs), self.d_head, generator=gen) * self.init_std if self.init_std else \
                torch.zeros(len(hs), self.d_head)
            self.params[str(l)] = nn.Parameter(init)
        self._index = {l: torch.tensor(hs, dtype=torch.long) for l, hs in self.heads.items()}
        self.model_id = model_id

    @classmethod
    def for_model(cls, wb, layers: Iterable[int] | None = None, heads=None, **kwargs):
        """Sized for ``wb``; ``layers=None`` and ``heads=None`` means every head of every layer."""
        if heads is None and layers is None:
            layers = range(wb.n_layers)
        obj = cls(layers, wb.n_heads, wb.d_head, heads=heads, model_id=wb.model_id, **kwargs)
        obj.check(wb)
        return obj

    @property
    def layers(self) -> list[int]:
        return list(self.heads)

    @property
    def head_list(self) -> list[tuple[int, int]]:
        return [(l, h) for l, hs in self.heads.items() for h in hs]

    def __repr__(self) -> str:
        n = len(self.head_list)
        layers = self.layers if len(self.layers) <= 8 else f"{self.layers[:4]}...{self.layers[-2:]}"
        return (f"{type(self).__name__}({n} heads in layers {layers}, d_head={self.d_head}, "
                f"n_heads={self.n_heads}, trainable={self.n_trainable()}, op={self.formula})")

    def vector(self, layer: int, head: int) -> torch.Tensor:
        """The ``[d_head]`` vector of one head (``A_h`` or ``v_h``)."""
        if layer not in self.heads or head not in self.heads[layer]:
            raise KeyError(f"head ({layer}, {head}) is not one of this {type(self).__name__}'s heads")
        return self.params[str(layer)][self.heads[layer].index(head)]

    def norms(self) -> dict[tuple[int, int], float]:
        """``{(layer, head): ||vector||_2}``."""
        return {(l, h): float(self.params[str(l)][i].detach().norm()) for l, hs in self.heads.items()
                for i, h in enumerate(hs)}

    def top_heads(self, k: int) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the largest ``||vector||_2``: ``[(layer, head, score)]``, best first."""
        ranked = sorted(self.norms().items(), key=lambda kv: (-kv[1], kv[0]))
        return [(l, h, s) for (l, h), s in ranked[:k]]

    def full(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        """``[n_heads, d_head]``: the chosen heads' vectors, zeros elsewhere (differentiable)."""
        p = self.params[str(layer)]
        idx = self._index[layer].to(like.device)
        return like.new_zeros(self.n_heads, self.d_head).index_copy(0, idx, p.to(like.dtype))

    def op(self, z: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def as_hooks(self, wb) -> dict:
        self._check_model_id(wb)
        if wb.n_heads != self.n_heads or wb.d_head != self.d_head:
            raise ValueError(f"{type(self).__name__} was built for n_heads={self.n_heads}, d_head={self.d_head} but "
                             f"{wb.model_id!r} has n_heads={wb.n_heads}, d_head={wb.d_head}")
        bad = [l for l in self.heads if not 0 <= l < wb.n_layers]
        if bad:
            raise ValueError(f"{type(self).__name__}: layers {bad} out of range "
                             f"({wb.model_id!r} has {wb.n_layers} layers)")
        hooks = {}
        for l in self.heads:
            site = f"blocks.{l}.attn.hook_z"
            wb.site(site)
            hooks[site] = lambda z, name, l=l: self.op(z, self.full(l, z))
        return hooks

    def _config(self) -> dict:
        return {"n_heads": self.n_heads, "d_head": self.d_head, "init_std": self.init_std,
                "heads": [[l, h] for l, h in self.head_list]}

    def _tensors(self) -> dict:
        return {f"layer.{l}": p.detach() for l, p in self.params.items()}

    @classmethod
    def _from_saved(cls, config, tensors):
        obj = cls(None, config["n_heads"], config["d_head"], heads=config["heads"], init_std=0.0)
        obj.init_std = config.get("init_std", 0.0)
        with torch.no_grad():
            for l, p in obj.params.items():
                p.copy_(tensors[f"layer.{l}"])
        return obj

    def load_values_from(self, other: _HeadParams) -> list[tuple[int, int]]:
        """Copy the vectors of heads both have (a warm start); return the heads copied."""
        copied = []
        with torch.no_grad():
            for l, h in self.head_list:
                if l in other.heads and h in other.heads[l]:
                    self.vector(l, h).copy_(other.vector(l, h))
                    copied.append((l, h))
        return copied


class HeadScale(_HeadParams):
    """LoFIT phase A: ``z_h <- (1 + A_h) * z_h`` for the chosen heads (``A_h`` init N(0, init_std),
    default 1e-3). ``heads=None``: every head of ``layers``; else ``[(layer, head), ...]`` or
    ``{layer: [heads]}``."""

    formula = "(1 + A_h) * z_h"
    default_init_std = 1e-3

    def op(self, z, full):
        return z * (1 + full)


class HeadBias(_HeadParams):
    """LoFIT phase v: ``z_h <- z_h + v_h`` for the chosen heads (``v_h`` init zeros by default)."""

    formula = "z_h + v_h"
    default_init_std = 0.0

    def op(self, z, full):
        return z + full


# ---------------------------------------------------------------------- Compose
class Compose(Intervention):
    """Several interventions at once (hooks on a shared site run in the given order)."""

    def __init__(self, *interventions: Intervention):
        super().__init__()
        self.items = nn.ModuleList([i for i in interventions if i is not None])

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(i) for i in self.items) + ")"

    def __len__(self) -> int:
        return len(self.items)

    def as_hooks(self, wb) -> dict:
        out: dict[str, list] = {}
        for item in self.items:
            for site, fn in item.as_hooks(wb).items():
                out.setdefault(site, []).extend(fn if isinstance(fn, (list, tuple)) else [fn])
        return out

    def save(self, path):
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(self.items):
            item.save(path / f"{i:02d}_{type(item).__name__}")
        (path / CONFIG_FILE).write_text(json.dumps(
            {"format": FORMAT, "format_version": FORMAT_VERSION, "type": "Compose", "model_id": self.model_id,
             "workbench_version": _version(), "config": {"n": len(self.items)}}, indent=2))
        return path

    @classmethod
    def load(cls, path):
        path = Path(path)
        manifest = json.loads((path / CONFIG_FILE).read_text())
        if manifest.get("type") != "Compose":
            return Compose(Intervention.load(path))
        parts = sorted(p for p in path.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file())
        return cls(*(Intervention.load(p) for p in parts))


_REGISTRY.pop("_HeadParams", None)
__all__ = ["Ablate", "Steer", "HeadScale", "HeadBias", "Compose", "Intervention", "load_intervention",
           "orthonormalize", "MASKS"]
