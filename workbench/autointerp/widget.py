"""A Jupyter widget (ipywidgets) to label the concepts of a ConceptSet.

Page through the concepts; for each, read its top / bottom examples (tokens highlighted by
activation) and the autointerp label, type or accept a label, tick "use for ablation", and save:
the choices are written into the ConceptSet file (``ConceptSet.save``).

>>> w = LabelingWidget(cs, "concepts/harm.safetensors", contexts=ctx)
>>> w          # displays in Jupyter
>>> # headless: w.label.value = "weapons"; w.use.value = True; w.save_button.click()

Every button is an ``ipywidgets.Button``; ``button.click()`` runs its callbacks without a
browser, which is how the tests drive it.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from .examples import TokenContexts, concept_examples


class LabelingWidget:
    """Label the concepts of ``concepts`` and save them to ``path``.

    Args:
        concepts: the ConceptSet (edited in place).
        path: the ConceptSet file the choices are saved to.
        contexts: :class:`~workbench.autointerp.examples.TokenContexts` for the examples (at the
            concepts' site; concepts at other sites show no examples).
        sae: read SAE-latent concepts through their latent (see ``concept_examples``).
        n_examples: top and bottom examples shown per concept.
        autosave: save on every Accept / Next / Previous as well as on Save.
    """

    def __init__(self, concepts, path: str | os.PathLike, contexts: TokenContexts | None = None, sae=None,
                 n_examples: int = 6, autosave: bool = True):
        import ipywidgets as W

        if len(concepts) == 0:
            raise ValueError("the ConceptSet is empty: nothing to label")
        self.concepts, self.path, self.contexts, self.sae = concepts, Path(path), contexts, sae
        self.n_examples, self.autosave = n_examples, autosave
        self.index = 0
        self._html_cache: dict[int, str] = {}
        self.saves = 0

        self.header = W.HTML()
        self.examples = W.HTML()
        self.suggestion = W.HTML()
        self.label = W.Text(description="Label", placeholder="what this direction means",
                            layout=W.Layout(width="60%"))
        self.use = W.Checkbox(description="use for ablation", indent=False)
        self.prev_button = W.Button(description="◀ Previous")
        self.next_button = W.Button(description="Next ▶")
        self.accept_button = W.Button(description="Accept suggestion", tooltip="copy the autointerp label")
        self.save_button = W.Button(description="Save", button_style="primary")
        self.status = W.HTML()
        self.prev_button.on_click(lambda _: self.go(self.index - 1))
        self.next_button.on_click(lambda _: self.go(self.index + 1))
        self.accept_button.on_click(lambda _: self.accept_suggestion())
        self.save_button.on_click(lambda _: self.save())
        self.box = W.VBox([
            self.header,
            W.HBox([self.prev_button, self.next_button, self.save_button]),
            self.suggestion,
            W.HBox([self.label, self.accept_button, self.use]),
            self.status,
            self.examples,
        ])
        self._show()

    # ---------------------------------------------------------------- state
    @property
    def concept(self):
        return self.concepts[self.index]

    def suggested_label(self) -> str | None:
        return (self.concept.meta.get("autointerp") or {}).get("label")

    def commit(self) -> None:
        """Copy the form (label, use for ablation) into the current concept."""
        self.concept.label = self.label.value.strip()
        self.concept.selected = bool(self.use.value)

    def go(self, index: int) -> None:
        """Commit the current concept and show concept ``index`` (clamped to the set)."""
        self.commit()
        if self.autosave:
            self.save(quiet=True)
        self.index = max(0, min(len(self.concepts) - 1, index))
        self._show()

    def accept_suggestion(self) -> None:
        s = self.suggested_label()
        if s:
            self.label.value = s
            self.commit()
            if self.autosave:
                self.save(quiet=True)

    def save(self, quiet: bool = False) -> Path:
        """Commit the form and write the ConceptSet file."""
        self.commit()
        out = self.concepts.save(self.path)
        self.saves += 1
        n_sel = sum(c.selected for c in self.concepts)
        n_lab = sum(bool(c.label) for c in self.concepts)
        self.status.value = (f"<span style='color:#15803d'>{'saved' if not quiet else 'auto-saved'} "
                             f"{html.escape(str(out))}: {n_lab} labelled, {n_sel} for ablation</span>")
        return out

    # ---------------------------------------------------------------- display
    def _examples_html(self) -> str:
        if self.index not in self._html_cache:
            c = self.concept
            if self.contexts is None or c.site != self.contexts.site:
                body = "<i>no examples for this site (pass contexts= at this concept's site)</i>"
            else:
                body = concept_examples(self.contexts, c, self.n_examples, sae=self.sae).html
            self._html_cache[self.index] = body
        return self._html_cache[self.index]

    def _show(self) -> None:
        c = self.concept
        score = "—" if c.score is None else f"{c.score:.4g}"
        self.header.value = (f"<b>{self.index + 1} / {len(self.concepts)}</b> · {html.escape(c.name)} · "
                             f"site <code>{html.escape(c.site)}</code> · method {html.escape(str(c.method))} · "
                             f"score {score}")
        ai = c.meta.get("autointerp") or {}
        det = ai.get("detection") or {}
        if ai and ai.get("label"):
            auroc = det.get("auroc")
            extra = "" if auroc is None else f" · detection AUROC {auroc:.2f}, accuracy {det.get('accuracy', 0):.2f}"
            self.suggestion.value = (f"autointerp ({html.escape(str(ai.get('explainer')))}): "
                                     f"<b>{html.escape(str(ai.get('label')))}</b>{extra}")
        else:
            self.suggestion.value = "<i>no autointerp label</i>" if not ai else \
                f"<i>autointerp ({html.escape(str(ai.get('explainer')))}) found no label</i>"
        self.label.value = c.label
        self.use.value = bool(c.selected)
        self.prev_button.disabled = self.index == 0
        self.next_button.disabled = self.index == len(self.concepts) - 1
        self.accept_button.disabled = not (ai and ai.get("label"))
        self.examples.value = self._examples_html()

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)
