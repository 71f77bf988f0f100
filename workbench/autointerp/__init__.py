"""Autointerp: top-activating examples, explainers, detection scorers and a labeling widget.

>>> from workbench.autointerp import TokenContexts, concept_examples, OfflineExplainer, KeywordScorer
>>> ctx = TokenContexts.capture(wb, prompts, "blocks.15.hook_resid_post", labels=labels)
>>> concept_examples(ctx, cs[0])                                   # HTML in Jupyter
>>> explain_and_score(cs, ctx, OfflineExplainer(), KeywordScorer())  # writes meta["autointerp"]
>>> LabelingWidget(cs, "concepts/harm.safetensors", contexts=ctx)   # label, pick, save

Online: ``LLMExplainer(ChatClient())`` / ``LLMScorer(ChatClient())`` with
``WORKBENCH_LLM_BASE_URL``, ``WORKBENCH_LLM_MODEL``, ``WORKBENCH_LLM_API_KEY`` set (OpenAI, vLLM,
Ollama). ``LabelingWidget`` imports ipywidgets only when constructed.
"""

from .client import ChatClient, ChatClientError, LocalChatClient
from .examples import (
    ConceptExamples,
    Example,
    SAELatent,
    TokenContexts,
    concept_examples,
    example_html,
    examples_html,
    feature_for,
    feature_values,
    projection_figure,
    top_examples,
)
from .explainers import Explanation, LLMExplainer, OfflineExplainer
from .scorers import (
    DetectionResult,
    KeywordScorer,
    LLMScorer,
    LocalModelScorer,
    auroc,
    detection_score,
    explain_and_score,
    holdout_examples,
)
from .widget import LabelingWidget

__all__ = [
    "ChatClient", "ChatClientError", "LocalChatClient", "ConceptExamples", "Example", "SAELatent", "TokenContexts",
    "concept_examples", "example_html", "examples_html", "feature_for", "feature_values", "projection_figure",
    "top_examples", "Explanation", "LLMExplainer", "OfflineExplainer", "DetectionResult", "KeywordScorer",
    "LLMScorer", "LocalModelScorer", "auroc", "detection_score", "explain_and_score", "holdout_examples",
    "LabelingWidget",
]
