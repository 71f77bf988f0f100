"""Top-activating examples: where a direction or an SAE latent is most positive / most negative.

:class:`TokenContexts` holds token-level activations of one site over a set of texts together
with the tokens themselves (captured through ``wb.capture(position="all")`` or read back from
an :class:`~workbench.ActivationStore` of the same prompts). A *feature* is anything that gives
one number per token: a :class:`~workbench.concepts.Concept` or a unit ``Tensor[d]``
(projection), or an :class:`SAELatent` (the SAE's latent activation).

:func:`top_examples` ranks records by their peak (or trough) token and cuts a window around it;
:func:`examples_html` renders them with every token coloured by its activation. All text goes
through ``html.escape``: the datasets contain markup (jailbreak templates, code).
:func:`projection_figure` is the plotly view of per-record projections coloured by label.

>>> ctx = TokenContexts.capture(wb, prompts, "blocks.15.hook_resid_post", labels=labels)
>>> view = concept_examples(ctx, cs[0], n=8)          # displays itself in Jupyter
>>> projection_figure(ctx, cs[0]).show()
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch

if TYPE_CHECKING:
    from sae_lens import SAE

    from ..model import Workbench

_SPECIAL = re.compile(r"<\|[^|>]{1,40}\|>")


# ============================================================================ features
@dataclass
class SAELatent:
    """Latent ``index`` of an SAE (a :class:`~workbench.concepts.WorkbenchSAE` or sae-lens SAE)."""

    sae: object
    index: int

    @property
    def name(self) -> str:
        return f"latent {self.index}"


def feature_name(feature) -> str:
    if isinstance(feature, SAELatent):
        return feature.name
    if hasattr(feature, "name") and hasattr(feature, "direction"):
        return feature.label or feature.name
    return "direction"


def feature_for(concept, sae=None):
    """The feature to read a concept through: its SAE latent when ``sae`` is given and the concept
    came from that SAE (``meta["sae_latent"]``), else its direction."""
    if sae is not None and "sae_latent" in getattr(concept, "meta", {}):
        return SAELatent(sae, int(concept.meta["sae_latent"]))
    return concept


@torch.no_grad()
def feature_values(acts: torch.Tensor, feature, batch_size: int = 4096) -> torch.Tensor:
    """``[rows]`` value of ``feature`` on token activations ``acts`` ``[rows, d]``."""
    acts = acts.reshape(acts.shape[0], -1).float()
    if isinstance(feature, SAELatent):
        sae = cast("SAE", getattr(feature.sae, "sae", feature.sae))  # a WorkbenchSAE's sae-lens SAE, or one itself
        p = next(sae.parameters())
        out = [sae.encode(acts[i:i + batch_size].to(p.device, p.dtype))[:, feature.index].float().cpu()
               for i in range(0, acts.shape[0], batch_size)]
        return torch.cat(out) if out else torch.zeros(0)
    direction = feature.direction if hasattr(feature, "direction") else torch.as_tensor(feature)
    direction = direction.float().flatten()
    if direction.shape[0] != acts.shape[1]:
        raise ValueError(f"direction width {direction.shape[0]} does not match activations width {acts.shape[1]}")
    return acts @ (direction / direction.norm())


# ============================================================================ contexts
@dataclass
class TokenContexts:
    """Token-level activations of one site over ``n`` records, with their tokens.

    Attributes:
        site: the site name.
        acts: ``[rows, d]`` activations, rows of record ``i`` at ``offsets[i]:offsets[i+1]``.
        tokens: per record, the display string of each token (from the rendered chat text).
        offsets: ``[n + 1]`` row offsets.
        scored: ``[rows]`` bool, the tokens ranked for top examples (the chat template's prefix,
            identical in every record, is excluded).
        labels, ids: optional per-record label (e.g. 1 harmful / 0 benign) and id.
    """

    site: str
    acts: torch.Tensor
    tokens: list[list[str]]
    offsets: torch.Tensor
    scored: torch.Tensor
    labels: list | None = None
    ids: list[str] | None = None
    model_id: str | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return (f"TokenContexts(site={self.site!r}, records={len(self)}, tokens={self.acts.shape[0]}, "
                f"d={self.acts.shape[1]}, model={self.model_id!r})")

    @staticmethod
    def _tokens(wb: Workbench, prompts, responses, batch_size: int) -> list[tuple[list[int], list[str]]]:
        out = []
        for lo in range(0, len(prompts), batch_size):
            batch = wb.tokenize(prompts[lo:lo + batch_size],
                                None if responses is None else responses[lo:lo + batch_size])
            if batch.offsets is None:
                raise RuntimeError("the chat formatter returned no token offsets")
            for i, text in enumerate(batch.texts):  # the batch's own character spans: no second tokenization
                real = batch.attention_mask[i].bool()
                out.append((batch.input_ids[i][real].tolist(), [text[s:e] for s, e in batch.offsets[i][real].tolist()]))
        return out

    @classmethod
    def _build(cls, site, acts, record_index, toks, labels, ids, model_id, skip_common_prefix) -> TokenContexts:
        counts = torch.bincount(record_index, minlength=len(toks))
        lengths = torch.tensor([len(t[0]) for t in toks])
        if not torch.equal(counts, lengths):
            bad = int((counts != lengths).nonzero()[0])
            raise ValueError(f"record {bad}: {int(counts[bad])} activation rows but {int(lengths[bad])} tokens "
                             "(were the activations captured with position='all' on these prompts?)")
        offsets = torch.zeros(len(toks) + 1, dtype=torch.long)
        offsets[1:] = lengths.cumsum(0)
        scored = torch.ones(acts.shape[0], dtype=torch.bool)
        if skip_common_prefix and len(toks) > 1:
            first = toks[0][0]
            n = len(first)
            for ids_, _ in toks[1:]:
                m = 0
                while m < min(n, len(ids_)) and ids_[m] == first[m]:
                    m += 1
                n = m
            n = min(n, int(lengths.min()) - 1)  # keep at least one token per record
            for i in range(len(toks)):
                scored[offsets[i]:offsets[i] + n] = False
        return cls(site, acts.reshape(acts.shape[0], -1).float(), [t[1] for t in toks], offsets, scored,
                   None if labels is None else list(labels), None if ids is None else [str(i) for i in ids],
                   model_id)

    @classmethod
    def from_tokens(cls, site: str, tokens: Sequence[Sequence[str]], acts: torch.Tensor, labels: Sequence | None = None,
                    ids: Sequence[str] | None = None, model_id: str | None = None) -> TokenContexts:
        """From token strings per record and their activations ``[sum(len), d]`` (every token scored)."""
        lengths = torch.tensor([len(t) for t in tokens])
        if int(lengths.sum()) != acts.shape[0]:
            raise ValueError(f"{int(lengths.sum())} tokens but {acts.shape[0]} activation rows")
        offsets = torch.zeros(len(tokens) + 1, dtype=torch.long)
        offsets[1:] = lengths.cumsum(0)
        return cls(site, acts.reshape(acts.shape[0], -1).float(), [list(t) for t in tokens], offsets,
                   torch.ones(acts.shape[0], dtype=torch.bool), None if labels is None else list(labels),
                   None if ids is None else [str(i) for i in ids], model_id)

    @classmethod
    def capture(cls, wb: Workbench, prompts: Sequence[str], site: str, responses: Sequence[str] | None = None,
                labels: Sequence | None = None, ids: Sequence[str] | None = None, batch_size: int = 8,
                skip_common_prefix: bool = True, progress: bool = False) -> TokenContexts:
        """Run ``wb`` over ``prompts`` (and ``responses``) and keep every token's activation at ``site``."""
        acts = wb.capture(list(prompts), [site], position="all", responses=responses, batch_size=batch_size,
                          progress=progress)
        toks = cls._tokens(wb, list(prompts), responses, batch_size)
        return cls._build(site, acts[site], acts.record_index, toks, labels, ids, wb.model_id, skip_common_prefix)

    @classmethod
    def from_store(cls, store, wb: Workbench, prompts: Sequence[str], site: str | None = None,
                   responses: Sequence[str] | None = None, skip_common_prefix: bool = True) -> TokenContexts:
        """Token contexts from an ActivationStore captured with ``position="all"`` on ``prompts``
        (the same list, order and responses; ``wb`` supplies the tokenizer and chat template)."""
        if store.manifest.get("position") not in ("all",):
            raise ValueError(f"the store holds position={store.manifest.get('position')!r}; top examples need 'all'")
        site = site or store.sites[0]
        if len(prompts) != store.manifest["n_records"]:
            raise ValueError(f"{len(prompts)} prompts for a store of {store.manifest['n_records']} records")
        toks = cls._tokens(wb, list(prompts), responses, 16)
        labels = store.manifest["records"]["labels"]
        return cls._build(site, store.load(site), store.record_index, toks,
                          None if all(v is None for v in labels) else labels, store.record_ids,
                          store.manifest.get("model_id"), skip_common_prefix)

    def values(self, feature) -> torch.Tensor:
        """``[rows]`` feature value per token (cached per feature object)."""
        key = id(feature)
        hit = self._cache.get(key)
        if hit is None or hit[0] is not feature:
            hit = (feature, feature_values(self.acts, feature))
            self._cache[key] = hit
        return hit[1]

    def record_scores(self, feature, reduce: str = "max") -> torch.Tensor:
        """``[n]`` per-record summary over scored tokens: ``max``, ``min``, ``mean`` or ``last``
        (a record without scored tokens uses all of its tokens)."""
        v = self.values(feature)
        n = len(self)
        if reduce == "last":
            return v[self.offsets[1:] - 1].clone()
        ops = {"max": "amax", "min": "amin", "mean": "mean"}
        if reduce not in ops:
            raise ValueError(f"reduce must be 'max', 'min', 'mean' or 'last', not {reduce!r}")
        rec = torch.repeat_interleave(torch.arange(n), self.offsets[1:] - self.offsets[:-1])
        has = torch.zeros(n, dtype=torch.bool)
        has[rec[self.scored]] = True
        use = self.scored | ~has[rec]
        return torch.zeros(n).scatter_reduce(0, rec[use], v[use].float(), ops[reduce], include_self=False)

    def text(self, i: int) -> str:
        return "".join(self.tokens[i])


# ============================================================================ examples
@dataclass
class Example:
    """One record's window around its extreme token."""

    record: int
    score: float            # the extreme value (peak for top, trough for bottom)
    peak: int               # index of the extreme token within ``tokens``
    tokens: list[str]
    values: list[float]
    label: object = None
    id: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def plain_text(self) -> str:
        """The window's text without chat-template markers (for explainers and scorers)."""
        return _SPECIAL.sub(" ", self.text).strip()


def _window(ctx: TokenContexts, i: int, v: torch.Tensor, peak_row: int, before: int, after: int) -> tuple[int, int]:
    lo, hi = int(ctx.offsets[i]), int(ctx.offsets[i + 1])
    first_scored = lo + int((~ctx.scored[lo:hi]).sum())
    start = max(first_scored if peak_row >= first_scored else lo, peak_row - before)
    stop = min(hi, peak_row + after + 1)
    return start, stop


def make_example(ctx: TokenContexts, feature, i: int, side: str = "top", window: tuple[int, int] = (32, 8)) -> Example:
    v = ctx.values(feature)
    lo, hi = int(ctx.offsets[i]), int(ctx.offsets[i + 1])
    seg = torch.where(ctx.scored[lo:hi], v[lo:hi], torch.tensor(float("nan")))
    if torch.isnan(seg).all():
        seg = v[lo:hi]
    j = int(torch.nan_to_num(seg, nan=-float("inf")).argmax() if side == "top"
            else torch.nan_to_num(seg, nan=float("inf")).argmin())
    start, stop = _window(ctx, i, v, lo + j, *window)
    return Example(record=i, score=float(v[lo + j]), peak=lo + j - start, tokens=ctx.tokens[i][start - lo:stop - lo],
                   values=v[start:stop].tolist(), label=None if ctx.labels is None else ctx.labels[i],
                   id=None if ctx.ids is None else ctx.ids[i])


def top_examples(ctx: TokenContexts, feature, n: int = 10, side: str = "top", window: tuple[int, int] = (32, 8),
                 exclude: Sequence[int] = ()) -> list[Example]:
    """The ``n`` records with the highest peak (``side="top"``) or lowest trough (``"bottom"``) of
    ``feature`` over their scored tokens, each cut to ``window`` = (tokens before, after) the extreme."""
    if side not in ("top", "bottom"):
        raise ValueError("side must be 'top' or 'bottom'")
    scores = ctx.record_scores(feature, "max" if side == "top" else "min")
    order = scores.argsort(descending=(side == "top")).tolist()
    skip = set(exclude)
    chosen = [i for i in order if i not in skip][:n]
    return [make_example(ctx, feature, i, side, window) for i in chosen]


# ============================================================================ HTML
def _color(v: float, vmax: float) -> str:
    a = 0.0 if vmax <= 0 else min(abs(v) / vmax, 1.0)
    rgb = "220,38,38" if v > 0 else "37,99,235"
    return f"rgba({rgb},{a * 0.85:.3f})"


def _token_html(tok: str) -> str:
    shown = html.escape(tok).replace("\n", "↵<br>")
    return shown if shown.strip() else shown.replace(" ", "&nbsp;") or "&#8203;"


def example_html(ex: Example, vmax: float | None = None) -> str:
    """One example: tokens as ``<span>`` coloured by activation (red +, blue -), value on hover;
    the extreme token underlined. Every token and label is HTML-escaped."""
    vmax = vmax if vmax is not None else max((abs(v) for v in ex.values), default=1.0)
    spans = []
    for j, (tok, v) in enumerate(zip(ex.tokens, ex.values)):
        style = f"background:{_color(v, vmax)};" + ("border-bottom:2px solid black;" if j == ex.peak else "")
        spans.append(f'<span style="{style}" title="{html.escape(repr(tok))}: {v:.3g}">{_token_html(tok)}</span>')
    label = "" if ex.label is None else f" · label {html.escape(str(ex.label))}"
    rid = "" if ex.id is None else f" · {html.escape(str(ex.id))}"
    return (f'<div style="margin:4px 0;padding:4px;border:1px solid #ddd;font-family:monospace;'
            f'white-space:pre-wrap;line-height:1.6"><div style="color:#666;font-size:11px">'
            f'{ex.score:+.3g}{label}{rid}</div>{"".join(spans)}</div>')


def examples_html(top: Sequence[Example], bottom: Sequence[Example] = (), title: str = "",
                  subtitle: str = "") -> str:
    """Top (most positive) and bottom (most negative) examples as one HTML block (escaped)."""
    vmax = max((abs(v) for ex in [*top, *bottom] for v in ex.values), default=1.0)
    parts = [f"<div><h4 style='margin:4px 0'>{html.escape(title)}</h4>"]
    if subtitle:
        parts.append(f"<div style='color:#444'>{html.escape(subtitle)}</div>")
    if top:
        parts.append("<b>Most positive</b>" + "".join(example_html(e, vmax) for e in top))
    if bottom:
        parts.append("<b>Most negative</b>" + "".join(example_html(e, vmax) for e in bottom))
    parts.append("</div>")
    return "".join(parts)


@dataclass
class ConceptExamples:
    """Top and bottom examples of one feature; shows itself as HTML in Jupyter."""

    title: str
    top: list[Example]
    bottom: list[Example]
    subtitle: str = ""

    @property
    def html(self) -> str:
        return examples_html(self.top, self.bottom, self.title, self.subtitle)

    def _repr_html_(self) -> str:
        return self.html


def concept_examples(ctx: TokenContexts, concept, n: int = 8, sae=None, window: tuple[int, int] = (32, 8),
                     bottom: bool = True) -> ConceptExamples:
    """Top / bottom examples of a concept (through its SAE latent when ``sae`` is given and it
    came from that SAE; an SAE latent has no negative side)."""
    feature = feature_for(concept, sae)
    top = top_examples(ctx, feature, n, "top", window)
    low = top_examples(ctx, feature, n, "bottom", window) if bottom and not isinstance(feature, SAELatent) else []
    is_concept = hasattr(concept, "direction") and hasattr(concept, "site")
    name = concept.name if is_concept else feature_name(feature)
    sub = f"label: {concept.label}" if is_concept and concept.label else ""
    return ConceptExamples(str(name), top, low, sub)


# ============================================================================ plotly
def projection_figure(ctx: TokenContexts, feature, other=None, reduce: str = "mean", labels: Sequence | None = None,
                      label_names: dict | None = None, title: str | None = None):
    """Per-record projections coloured by label: a histogram for one feature, a scatter for two.

    ``reduce``: per record ``mean`` / ``max`` / ``min`` / ``last`` over scored tokens."""
    import plotly.graph_objects as go

    labels = list(labels if labels is not None else (ctx.labels or [None] * len(ctx)))
    names = label_names or {1: "harmful (1)", 0: "benign (0)", None: "unlabelled"}
    x = ctx.record_scores(feature, reduce).tolist()
    y = ctx.record_scores(other, reduce).tolist() if other is not None else None
    texts = [html.escape(ctx.text(i)[-120:]) for i in range(len(ctx))]
    fig = go.Figure()
    for lab in sorted(set(labels), key=lambda v: (v is None, str(v))):
        idx = [i for i, v in enumerate(labels) if v == lab]
        name = names.get(lab, str(lab))
        if y is None:
            fig.add_trace(go.Histogram(x=[x[i] for i in idx], name=name, opacity=0.6, nbinsx=40))
        else:
            fig.add_trace(go.Scatter(x=[x[i] for i in idx], y=[y[i] for i in idx], mode="markers", name=name,
                                     text=[texts[i] for i in idx], hoverinfo="text+x+y"))
    xname = feature_name(feature)
    fig.update_layout(title=title or f"{reduce} projection on {xname} ({ctx.site})", barmode="overlay",
                      xaxis_title=xname, yaxis_title="records" if y is None else feature_name(other),
                      template="plotly_white", height=380)
    return fig
