"""LoFIT's per-head interventions on ``blocks.{l}.attn.hook_z`` (before ``o_proj``):
:class:`HeadScale` ``(1 + A_h) * z_h`` and :class:`HeadBias` ``z_h + v_h``, with ``nn.Parameter`` s
for the chosen heads only. ``z`` carries every *query* head, so this works for grouped-query
attention.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..sites import site_name
from .base import _REGISTRY, Intervention

if TYPE_CHECKING:
    from ..model import Workbench


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
    def for_model(cls, wb: Workbench, layers: Iterable[int] | None = None, heads=None, **kwargs):
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

    def as_hooks(self, wb: Workbench) -> dict:
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
            site = site_name(l, "z")
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

    def fold_into(self, wb: Workbench) -> None:
        """Make the biases part of ``wb``'s weights: each chosen layer's attention output projection
        gets ``bias += W_O v`` (``v`` ``[n_heads * d_head]``, zeros off the chosen heads), since
        ``o_proj(z + v) = o_proj(z) + W_O v``. The same model with no hook to install, so generation
        takes the hook-free path; ``hook_z`` then shows z without ``v``. In place, for inference."""
        self.check(wb)
        with torch.no_grad():
            for l in self.heads:
                lin = _o_proj(wb, l)
                add = lin.weight @ self.full(l, lin.weight).reshape(-1)
                if lin.bias is None:
                    lin.register_parameter("bias", nn.Parameter(add, requires_grad=False))
                else:
                    lin.bias.add_(add)


def _o_proj(wb: Workbench, layer: int) -> nn.Linear:
    """Layer ``layer``'s attention output projection (the module ``hook_z`` feeds)."""
    from .._forward import decoder_and_head

    decoder: Any = decoder_and_head(wb.model)[0]  # a PreTrainedModel's decoder: nn.Module's stubs type .layers as Tensor
    block = decoder.layers[layer]
    attn = block.attn if hasattr(block, "attn") else block.self_attn  # bridged / plain Hugging Face
    o = attn.o if hasattr(attn, "o") else attn.o_proj
    lin = getattr(o, "original_component", o)
    if not isinstance(lin, nn.Linear):
        raise TypeError(f"layer {layer}'s attention output is a {type(lin).__name__}, not an nn.Linear")
    return lin


# ---------------------------------------------------------------------- Compose


_REGISTRY.pop("_HeadParams", None)  # a base class, never saved as such
