"""Turn the inputs discovery methods accept (an ActivationStore, a ``{site: tensor}`` mapping, one
tensor) into ``{site: Tensor[N, d]}`` plus what provenance needs (model id, dataset fingerprint)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Features:
    x: dict[str, torch.Tensor]         # site -> [N, d] (float)
    labels: torch.Tensor | None        # [N] or None
    model_id: str | None
    dataset_fingerprint: str | None
    position: str | None
    record_index: torch.Tensor | None  # [N] or None


def _flat(site: str, x: torch.Tensor) -> torch.Tensor:
    """``[N, d]`` as is; ``[N, H, dh]`` (a whole ``attn.hook_z`` site) flattened to ``[N, H*dh]``."""
    if x.dim() == 2:
        return x
    if x.dim() == 3 and site.endswith("attn.hook_z"):
        return x.reshape(x.shape[0], -1)
    raise ValueError(f"site {site!r}: expected [N, d] features, got shape {tuple(x.shape)} "
                     "(for post_instruction [N, k, d] activations pick a token or use post_instruction_mean)")


def as_features(source, sites: Sequence[str] | str | None = None, labels=None, *,
                model_id: str | None = None, dataset_fingerprint: str | None = None) -> Features:
    """``source``: an :class:`~workbench.ActivationStore`, a mapping ``{site: Tensor[N, d]}`` (e.g.
    ``wb.capture(...)``), or a single ``Tensor[N, d]`` (then ``sites`` names its one site)."""
    from ..activations import ActivationStore

    if isinstance(sites, str):
        sites = [sites]
    record_index = None
    position = None
    if isinstance(source, ActivationStore):
        m = source.manifest
        sites = list(sites) if sites is not None else source.sites
        x = {s: source.load(s) for s in sites}
        record_index = source.record_index
        if labels is None:
            labels = source.labels
        model_id = model_id or m.get("model_id")
        dataset_fingerprint = dataset_fingerprint or m.get("dataset_fingerprint")
        position = m.get("position")
    elif isinstance(source, torch.Tensor):
        if not sites or len(sites) != 1:
            raise ValueError("a single tensor needs exactly one site name: sites='blocks.L.hook_resid_post'")
        x = {sites[0]: source}
    elif isinstance(source, Mapping):
        sites = list(sites) if sites is not None else list(source)
        missing = [s for s in sites if s not in source]
        if missing:
            raise KeyError(f"sites {missing} are not in the features; it has {list(source)}")
        x = {s: source[s] for s in sites}
        record_index = getattr(source, "record_index", None)
        position = getattr(source, "position", None)
    else:
        raise TypeError(f"expected an ActivationStore, a {{site: tensor}} mapping or a tensor, got {type(source).__name__}")
    if not x:
        raise ValueError("no sites to work on")
    x = {s: _flat(s, torch.as_tensor(v)).float() for s, v in x.items()}
    n = {s: v.shape[0] for s, v in x.items()}
    if len(set(n.values())) != 1:
        raise ValueError(f"sites have different row counts: {n}")
    for s, v in x.items():
        if not torch.isfinite(v).all():
            raise ValueError(f"site {s!r} contains NaN or inf")
    if labels is not None:
        labels = torch.as_tensor(labels).flatten()
        if labels.shape[0] != next(iter(n.values())):
            raise ValueError(f"{labels.shape[0]} labels for {next(iter(n.values()))} rows")
    return Features(x, labels, model_id, dataset_fingerprint, position, record_index)
