"""Concept discovery: directions at named sites, with labels and provenance.

>>> from workbench.concepts import ConceptSet, diff_means, pca, pca_diff, train_sae, load_sae
>>> cs = diff_means(store, sites=["blocks.12.hook_resid_post"], label="harmful - benign")
>>> cs = cs.union(pca(store, k=5, drop_dims=[507])).orthonormalize()
>>> cs.save("concepts/harm.safetensors"); ConceptSet.load("concepts/harm.safetensors", wb=wb)

Modules: :mod:`.conceptset` (the container and its file format), :mod:`.diffmeans`,
:mod:`.pca` (PCA of one model, PCA of the fine-tuned - base difference as CAFT), :mod:`.sae`
(sae-lens training and loading; :mod:`.sae_cli` the ``sae train`` command), :mod:`.latents` (CAFT's three latent choices).
"""

from typing import TYPE_CHECKING

from .conceptset import Concept, ConceptSet, WidthMismatch, provenance
from .diffmeans import diff_means, diff_means_between
from .pca import activation_difference, paired_activations, pca, pca_diff, principal_components, random_directions, top_components

# The SAE names load lazily: importing sae-lens takes seconds, and an eager import would make
# ``python -m workbench.concepts.sae`` warn that the module was imported before it ran.
_SAE_NAMES = ("WorkbenchSAE", "build_training_store", "common_prefix_length", "load_pretrained_sae", "load_sae",
              "massive_dims", "sae_metrics", "saes_dir", "train_sae")


_SAE_DATA_NAMES = ("build_training_store", "common_prefix_length")  # the store side of SAE training
_LATENT_NAMES = ("latent_attribution", "latents_by_attribution", "latents_by_diff_encoding", "latents_by_mean_diff")

if TYPE_CHECKING:  # what __getattr__ provides, for type checkers
    from .latents import latent_attribution, latents_by_attribution, latents_by_diff_encoding, latents_by_mean_diff
    from .sae import WorkbenchSAE, load_pretrained_sae, load_sae, massive_dims, sae_metrics, saes_dir, train_sae
    from .sae_data import build_training_store, common_prefix_length


def __getattr__(name: str):
    if name in _LATENT_NAMES:
        from . import latents

        return getattr(latents, name)
    if name in _SAE_NAMES:
        from . import sae, sae_data

        return getattr(sae_data if name in _SAE_DATA_NAMES else sae, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Concept", "ConceptSet", "WidthMismatch", "provenance", "diff_means", "diff_means_between", "pca", "pca_diff",
    "principal_components", "paired_activations", "activation_difference", "random_directions", "top_components",
    "WorkbenchSAE", "train_sae", "load_sae", "load_pretrained_sae", "sae_metrics", "massive_dims", "saes_dir",
    "build_training_store", "common_prefix_length", "latents_by_mean_diff", "latents_by_diff_encoding",
    "latents_by_attribution", "latent_attribution",
]
