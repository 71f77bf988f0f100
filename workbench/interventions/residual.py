"""Residual-stream interventions: :class:`Ablate` (CAFT's projection ``x - (x Q) Q^T``, or mean
ablation) and :class:`Steer` (activation addition)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from .base import Intervention, _flat, _Positional, _site_width, _width_error

if TYPE_CHECKING:
    from ..model import Workbench


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

    def __init__(self, directions, mean: Mapping[str, torch.Tensor] | None = None, positions: str | torch.Tensor = "all",
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

    def as_hooks(self, wb: Workbench) -> dict:
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

    def __init__(self, site: str, direction: torch.Tensor, alpha: float = 1.0, positions: str | torch.Tensor = "all",
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

    def as_hooks(self, wb: Workbench) -> dict:
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
