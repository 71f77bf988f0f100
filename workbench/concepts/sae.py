"""Sparse autoencoders with sae-lens: train on an activation store, save with metrics, load.
Data streaming is in :mod:`.sae_data`, latent choice (CAFT's three ways) in :mod:`.latents`.

Training (:func:`train_sae`) feeds ``sae_lens.SAETrainer`` shuffled activation batches from an
:class:`~workbench.ActivationStore` (no model object, no hub model or dataset): a ``TopKTrainingSAE``
or ``BatchTopKTrainingSAE``. SmolLM2's residual stream has a massive-activation dimension (507):
~25,000 at position 0, where it holds ~98% of the variance, and ~80 (nearly constant) elsewhere.
Training skips each record's fixed chat-template prefix (``skip_first``, see
:func:`common_prefix_length`) and, given enough rows, uses sae-lens ``normalize_activations=
"covariance_whitening"``, folded into the saved weights (the saved SAE takes raw activations). The
folder holds sae-lens's ``cfg.json`` + ``sae_weights.safetensors`` and ``workbench.json`` (model id,
site, dataset fingerprint, parameters, held-out metrics: explained variance overall and without the
massive dimension, L0, dead latents, tokens/s). Command line (``workbench sae train`` is the same)::

    python -m workbench.concepts.sae train --site blocks.15.hook_resid_post --out saes/my-sae [--store DIR] ...
    python -m workbench.concepts.sae info saes/my-sae
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import torch
from tqdm.auto import tqdm

from .conceptset import Concept, ConceptSet, WidthMismatch, _code_version, _jsonable, provenance
from .sae_data import ActivationSource

if TYPE_CHECKING:
    from sae_lens import SAE

    from ..model import Workbench

FORMAT = "workbench.sae/1"
MANIFEST = "workbench.json"
ARCHITECTURES = ("topk", "batchtopk")


def saes_dir() -> Path:
    """The repository's ``saes/`` folder (small trained SAEs for the default model)."""
    return Path(__file__).resolve().parents[2] / "saes"


# ============================================================================ metrics
def massive_dims(x: torch.Tensor, threshold: float = 0.2, top: int = 4) -> list[int]:
    """Dimensions holding at least ``threshold`` of the total variance (SmolLM2: ``[507]``)."""
    var = x.double().var(0, correction=0)
    frac = var / var.sum().clamp_min(1e-300)
    vals, dims = frac.topk(min(top, len(frac)))
    return [int(d) for v, d in zip(vals, dims) if float(v) >= threshold]


@torch.no_grad()
def sae_metrics(sae, x: torch.Tensor, massive: Sequence[int] | None = None, batch_size: int = 4096) -> dict:
    """Reconstruction quality of ``sae`` on rows ``x`` ``[N, d]``.

    ``explained_variance`` = 1 - sum||x - x_hat||^2 / sum||x - mean(x)||^2 (0 is the mean baseline);
    ``explained_variance_without_massive``: the same over the dimensions not in ``massive``
    (default: detected with :func:`massive_dims`); ``l0``: mean active latents per token;
    ``dead_latents``: latents that never fire on ``x``."""
    sae = getattr(sae, "sae", sae)
    x = x.reshape(x.shape[0], -1).float()
    massive = massive_dims(x) if massive is None else list(massive)
    keep = torch.ones(x.shape[1], dtype=torch.bool)
    keep[massive] = False
    mean = x.double().mean(0)
    err_all = err_keep = tot_all = tot_keep = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    dtype = next(sae.parameters()).dtype
    device = next(sae.parameters()).device
    for lo in range(0, x.shape[0], batch_size):
        xb = x[lo:lo + batch_size]
        f = sae.encode(xb.to(device, dtype))
        xh = sae.decode(f).double().cpu()
        f = f.cpu()
        e = (xb.double() - xh).pow(2)
        t = (xb.double() - mean).pow(2)
        err_all += float(e.sum())
        err_keep += float(e[:, keep].sum())
        tot_all += float(t.sum())
        tot_keep += float(t[:, keep].sum())
        active = f != 0
        l0 += float(active.sum())
        fired |= active.any(0)
    n = max(x.shape[0], 1)
    return {
        "explained_variance": 1 - err_all / tot_all if tot_all > 0 else float("nan"),
        "explained_variance_without_massive": 1 - err_keep / tot_keep if tot_keep > 0 else float("nan"),
        "massive_dims": massive,
        "mse": err_all / (n * x.shape[1]),
        "l0": l0 / n,
        "dead_latents": int((~fired).sum()),
        "dead_fraction": float((~fired).float().mean()),
        "eval_tokens": int(x.shape[0]),
        "d_sae": int(sae.cfg.d_sae),
    }


# ============================================================================ the SAE object
@dataclass
class WorkbenchSAE:
    """An sae-lens SAE with the site and model it belongs to.

    ``sae`` is the sae-lens object (``encode``, ``decode``, ``W_dec`` ``[d_sae, d_in]``);
    ``manifest`` the ``workbench.json`` content (training parameters and metrics) or, for a
    pretrained SAE, its release / id."""

    sae: SAE
    site: str
    model_id: str | None = None
    manifest: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def W_dec(self) -> torch.Tensor:
        return self.sae.W_dec.detach()

    @property
    def metrics(self) -> dict:
        return dict(self.manifest.get("metrics") or {})

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else str(self.manifest.get("release", "in memory"))

    def __repr__(self) -> str:
        m = self.metrics
        ev = (f", EV={m['explained_variance']:.3f}, EV w/o {m.get('massive_dims')}="
              f"{m['explained_variance_without_massive']:.3f}, L0={m['l0']:.1f}") if m else ""
        return f"WorkbenchSAE({self.source!r}, site={self.site!r}, {self.d_in}->{self.d_sae}{ev})"

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Latent activations ``[N, d_sae]`` of raw activations ``x`` ``[N, d_in]``."""
        x = x.reshape(x.shape[0], -1)
        p = next(self.sae.parameters())
        return torch.cat([self.sae.encode(x[i:i + batch_size].to(p.device, p.dtype)).float().cpu()
                          for i in range(0, max(x.shape[0], 1), batch_size)]) if x.shape[0] else \
            torch.zeros(0, self.d_sae)

    def check(self, wb: Workbench) -> WorkbenchSAE:
        """Refuse a model whose width at the SAE's site differs from ``d_in``."""
        width = math.prod(wb.site_shape(self.site))
        if width != self.d_in:
            raise WidthMismatch(f"SAE {self.source} reads {self.d_in}-wide activations at {self.site!r}, but model "
                                f"{wb.model_id!r} has width {width} there")
        return self

    def metrics_on(self, x: torch.Tensor, massive: Sequence[int] | None = None) -> dict:
        return sae_metrics(self.sae, x, massive)

    def concepts(self, latents: Sequence[int], scores: Sequence[float] | None = None, method: str = "sae",
                 params: dict | None = None, dataset_fingerprint: str | None = None, name: str | None = None
                 ) -> ConceptSet:
        """Concepts from decoder rows ``W_dec[latents]`` (unit-normalized), with ``meta["sae_latent"]``."""
        prov = provenance(method, self.model_id, dataset_fingerprint, {"sae": self.source, **(params or {})})
        out = ConceptSet()
        for i, j in enumerate(latents):
            j = int(j)
            out.add(Concept(f"{name or method}/{self.site}/{j}", self.site, self.W_dec[j].float(), "",
                            None if scores is None else float(scores[i]), provenance=prov,
                            meta={"sae_latent": j, "sae": self.source}))
        return out


def _as_wsae(sae, site: str | None = None) -> WorkbenchSAE:
    if isinstance(sae, WorkbenchSAE):
        return sae
    site = site or getattr(getattr(sae.cfg, "metadata", None), "hook_name", None)
    if site is None:
        raise ValueError("name the SAE's site: site='blocks.L.hook_resid_post'")
    return WorkbenchSAE(sae, site, getattr(sae.cfg.metadata, "model_name", None))


def load_sae(path: str | os.PathLike, wb=None, device: str = "cpu") -> WorkbenchSAE:
    """Load an SAE folder written by :func:`train_sae` (or any sae-lens ``save_inference_model``
    folder); with ``wb``, check its width against the model."""
    from sae_lens import SAE

    path = Path(path)
    if not (path / "cfg.json").is_file():
        raise FileNotFoundError(f"{path} is not an SAE folder (no cfg.json)")
    sae = SAE.load_from_disk(str(path), device=device)
    manifest = json.loads((path / MANIFEST).read_text()) if (path / MANIFEST).is_file() else {}
    site = manifest.get("site") or sae.cfg.metadata.hook_name
    if site is None:
        raise ValueError(f"{path}: the SAE's site is not recorded (no {MANIFEST}, no cfg metadata.hook_name)")
    out = WorkbenchSAE(sae, site, manifest.get("model_id") or sae.cfg.metadata.model_name, manifest, path)
    if wb is not None:
        out.check(wb)
    return out


def load_pretrained_sae(release: str, sae_id: str, device: str = "cpu", site: str | None = None) -> WorkbenchSAE:
    """An sae-lens pretrained SAE by release id (e.g. ``"gpt2-small-res-jb"``, ``"blocks.8.hook_resid_pre"``).
    Needs network access to the Hugging Face hub (online users only). The site defaults to the
    SAE's ``hook_name``; sae-lens hook names are TransformerLens names, as ours."""
    from sae_lens import SAE

    sae = SAE.from_pretrained(release, sae_id, device=device)
    out = _as_wsae(sae, site)
    out.manifest = {"release": f"{release}/{sae_id}", "model_id": sae.cfg.metadata.model_name, "site": out.site}
    return out


# ============================================================================ training
@contextlib.contextmanager
def _quiet_sae_lens_bars():
    """sae-lens's own tqdm bars update once per 100 steps; ours replaces them for the duration."""
    from sae_lens.training import activation_scaler, sae_trainer

    saved = sae_trainer.tqdm, activation_scaler.tqdm

    def quiet(*args, **kwargs):
        kwargs["disable"] = True
        return saved[0](*args, **kwargs)

    sae_trainer.tqdm = activation_scaler.tqdm = quiet
    try:
        yield
    finally:
        sae_trainer.tqdm, activation_scaler.tqdm = saved


@contextlib.contextmanager
def _flush_denormals():
    """Flush denormal floats to zero for the duration (CPU): TopK SAE training steps on this machine
    ran 2-5x slower when tiny gradients went denormal. Resets to torch's default (off) afterwards."""
    enabled = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if enabled:
            torch.set_flush_denormal(False)


def _counted(batches: Iterator[torch.Tensor], bar) -> Iterator[torch.Tensor]:
    for b in batches:
        bar.update(b.shape[0])
        yield b


def train_sae(source, site: str | None = None, out: str | os.PathLike | None = None, *,
              architecture: str = "topk", d_sae: int | None = None, expansion: int = 4, k: int = 32,
              total_tokens: int | None = None, epochs: float = 1.0, batch_size: int = 256, lr: float = 3e-3,
              lr_end: float | None = None, lr_warm_up_steps: int = 0, lr_decay_fraction: float = 0.2,
              normalize_activations: str = "auto", skip_first: int = 0, eval_fraction: float = 0.1,
              max_eval_tokens: int = 20_000, massive: Sequence[int] | None = None, seed: int = 0,
              device: str = "cpu", model_id: str | None = None, progress: bool = True) -> WorkbenchSAE:
    """Train a TopK / BatchTopK SAE with sae-lens on one site's activations; save it with metrics.

    Args:
        source: an :class:`~workbench.ActivationStore` (or its folder) holding token-level rows
            (``position="all"`` or ``"response"``), or a ``Tensor[N, d]``.
        site: the store's site to train on (optional if the store has one).
        out: folder to write (``cfg.json``, ``sae_weights.safetensors``, ``workbench.json``);
            ``None`` keeps it in memory.
        architecture: ``"topk"`` (k latents per token) or ``"batchtopk"`` (k on average over a
            batch; saved by sae-lens as a JumpReLU SAE).
        d_sae: number of latents (default ``expansion * d_in``). k: active latents per token.
        total_tokens: training samples drawn (default ``epochs`` passes over the training rows).
        batch_size: rows per optimizer step. lr, lr_end, lr_warm_up_steps: Adam learning-rate
            schedule; the last ``lr_decay_fraction`` of steps decay linearly to ``lr_end``
            (default ``lr / 10``; sae-lens needs it set). The default ``lr=3e-3`` suits the short
            CPU runs here (hundreds to a few thousand steps): on 85k tokens of SmolLM2 layer 15,
            one epoch reached held-out EV 0.74 at 3e-3, 0.67 at 1e-3 and 0.44 at 3e-4.
        normalize_activations: sae-lens option. ``"covariance_whitening"`` handles a massive
            dimension (SmolLM2's 507 at position 0) and keeps latents alive (1.4% never fired
            on held-out tokens vs 17% with a scalar scale), and is folded into the saved weights;
            but it needs many rows: estimated from ~1k tokens of d=576 it overfits (held-out
            EV < 0). ``"auto"`` (default) whitens with at least ``50 * d_in`` training rows, else
            uses ``"expected_average_only_in"`` (one scale factor, also folded). ``"none"`` works too.
        skip_first: tokens dropped at the start of every record (:func:`common_prefix_length` of
            the model: the chat template's fixed system prompt, identical in every record).
        eval_fraction: records held out (seeded) for the metrics; ``max_eval_tokens`` caps them.
        massive: dimensions left out of ``explained_variance_without_massive`` (default: those with
            >= 20% of the variance over *all* rows of the first shard, skipped tokens included:
            SmolLM2's 507 is massive at position 0, where it is ~25,000).
        seed: data order, initialization and held-out split.
        model_id: recorded in the manifest (a store supplies its own).
        progress: show a tqdm bar over the activation rows drawn (whitening estimate + training).

    Returns a :class:`WorkbenchSAE` whose ``metrics`` has ``explained_variance``,
    ``explained_variance_without_massive`` (+ ``massive_dims``), ``l0``, ``dead_latents``,
    ``dead_latents_training`` (sae-lens's count at the end), ``tokens_per_s`` (training
    throughput, whitening estimate included), ``train_tokens``, ``train_seconds``.
    """
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, not {architecture!r}")
    data = ActivationSource(source, site, eval_fraction=eval_fraction, skip_first=skip_first, seed=seed)
    model_id = model_id or data.model_id
    n_train = data.count_train_rows()
    if n_train < batch_size:
        raise ValueError(f"only {n_train} training rows at {data.site!r}, fewer than batch_size={batch_size}")
    d_in = data.d_in
    d_sae = d_sae or expansion * d_in
    if normalize_activations == "auto":
        normalize_activations = "covariance_whitening" if n_train >= 50 * d_in else "expected_average_only_in"
    total_tokens = int(total_tokens or max(batch_size, n_train * epochs))
    steps = max(1, total_tokens // batch_size)
    total_tokens = steps * batch_size
    lr_end = lr / 10 if lr_end is None else lr_end
    norm_batches = max(1, math.ceil(min(n_train, 100_000) / batch_size)) if normalize_activations in (
        "covariance_whitening", "expected_average_only_in") else 0

    torch.manual_seed(seed)
    norm = cast(Literal["none", "expected_average_only_in", "layer_norm", "covariance_whitening"], normalize_activations)
    sae: TopKTrainingSAE | BatchTopKTrainingSAE
    if architecture == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, normalize_activations=norm, device=device))
    else:
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, normalize_activations=norm,
                                                              device=device))
    sae.cfg.metadata.hook_name = data.site
    sae.cfg.metadata.model_name = model_id
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total_tokens, train_batch_size_samples=batch_size, lr=lr, lr_end=lr_end,
        lr_warm_up_steps=lr_warm_up_steps, lr_decay_steps=int(steps * lr_decay_fraction), device=device,
        dead_feature_window=max(1, min(1000, steps // 5)), feature_sampling_window=steps + 1,
        n_batches_for_norm_estimate=max(norm_batches, 1), logger=LoggingConfig(log_to_wandb=False))
    bar = tqdm(total=total_tokens + norm_batches * batch_size, desc=f"SAE {data.site}", unit="tok",
               disable=not progress, smoothing=0.1)
    t0 = time.perf_counter()
    with _quiet_sae_lens_bars(), _flush_denormals():
        trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=_counted(data.batches(batch_size), bar),
                             save_checkpoint_fn=None)
        trained = trainer.fit()
    seconds = time.perf_counter() - t0
    bar.close()
    dead_training = int(trainer.dead_neurons.sum())

    eval_x = data.eval_rows(max_eval_tokens)
    if massive is None:
        massive = massive_dims(data._load(0)[0])
    params = {"architecture": architecture, "d_in": d_in, "d_sae": d_sae, "k": k, "total_tokens": total_tokens,
              "batch_size": batch_size, "lr": lr, "lr_end": lr_end, "lr_warm_up_steps": lr_warm_up_steps,
              "lr_decay_steps": trainer_cfg.lr_decay_steps, "normalize_activations": normalize_activations,
              "skip_first": skip_first, "eval_fraction": eval_fraction, "seed": seed}
    manifest = {"format": FORMAT, "model_id": model_id, "site": data.site,
                "dataset_fingerprint": data.dataset_fingerprint,
                "store": str(data.store.path) if data.store is not None else None, "params": params,
                "code_version": _code_version(), "sae_lens_version": _sae_lens_version(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if out is not None:
        out = Path(out)
        trained.save_inference_model(str(out))
        result = load_sae(out, device=device)  # evaluate what was saved: the inference SAE from disk
    else:
        result = WorkbenchSAE(trained, data.site, model_id)
    metrics = sae_metrics(result.sae, eval_x, massive) if eval_x.shape[0] else {}
    metrics.update(dead_latents_training=dead_training, train_tokens=total_tokens, unique_train_tokens=n_train,
                   train_seconds=seconds, tokens_per_s=(total_tokens + norm_batches * batch_size) / seconds,
                   steps=steps)
    manifest["metrics"] = metrics
    result.manifest, result.model_id = _jsonable(manifest), model_id
    if out is not None:
        tmp = out / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(result.manifest, indent=1))
        os.replace(tmp, out / MANIFEST)
    return result


def _sae_lens_version() -> str:
    import sae_lens

    return str(getattr(sae_lens, "__version__", "unknown"))


if __name__ == "__main__":  # ``python -m workbench.concepts.sae``: the command line lives in sae_cli
    from .sae_cli import cli_main

    raise SystemExit(cli_main())
