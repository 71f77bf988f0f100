"""The base of every intervention: :class:`Intervention` (hooks, save / load as safetensors +
JSON, the type registry), position masks, width checks, and :class:`Compose`."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Self, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from ..model import Workbench

FORMAT = "workbench.intervention"
FORMAT_VERSION = 1
CONFIG_FILE = "intervention.json"
TENSORS_FILE = "tensors.safetensors"
MASKS = ("prompt", "response", "post_instruction", "attention")

_REGISTRY: dict[str, type[Intervention]] = {}


def _version() -> str:
    try:
        from .. import __version__

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
    def as_hooks(self, wb: Workbench) -> dict:
        raise NotImplementedError

    def check(self, wb: Workbench) -> None:
        """Raise a clear error if this intervention does not fit ``wb``'s model."""
        self.as_hooks(wb)

    def _check_model_id(self, wb: Workbench) -> None:
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
    def load(cls, path: str | Path) -> Self:
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
            return cast(Self, _REGISTRY["Compose"].load(path))
        if kind not in _REGISTRY:
            raise ValueError(f"{path}: unknown intervention type {kind!r}; known: {sorted(_REGISTRY)}")
        target = _REGISTRY[kind]
        if cls is not Intervention and not issubclass(target, cls):
            raise TypeError(f"{path} holds a {kind}, not a {cls.__name__}")
        obj = target._from_saved(manifest["config"], load_file(str(path / TENSORS_FILE)))
        obj.model_id = manifest.get("model_id")
        return cast(Self, obj)  # an instance of cls or of a subclass (checked above)


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


def _site_width(wb: Workbench, site: str) -> int:
    """Width of the last (flattened) axis a direction acts on at ``site``."""
    return math.prod(wb.site_shape(site))


def _width_error(kind: str, site: str, got: int, wb: Workbench) -> ValueError:
    return ValueError(f"{kind}: the vectors for site {site!r} have width {got}, but that site has width "
                      f"{_site_width(wb, site)} on {wb.model_id!r} (d_model={wb.d_model}, n_heads={wb.n_heads}, "
                      f"d_head={wb.d_head}); were they computed on another model?")


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``[batch, pos, *shape]`` -> ``[batch, pos, prod(shape)]`` (a view)."""
    return x if x.dim() == 3 else x.reshape(*x.shape[:2], -1)


class Compose(Intervention):
    """Several interventions at once (hooks on a shared site run in the given order)."""

    def __init__(self, *interventions: Intervention):
        super().__init__()
        self.items = nn.ModuleList([i for i in interventions if i is not None])

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(i) for i in self.items) + ")"

    def __len__(self) -> int:
        return len(self.items)

    def as_hooks(self, wb: Workbench) -> dict:
        out: dict[str, list] = {}
        for item in cast("Iterable[Intervention]", self.items):
            for site, fn in item.as_hooks(wb).items():
                out.setdefault(site, []).extend(fn if isinstance(fn, (list, tuple)) else [fn])
        return out

    def save(self, path):
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(cast("Iterable[Intervention]", self.items)):
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
