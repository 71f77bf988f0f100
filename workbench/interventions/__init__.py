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

from .base import MASKS, Compose, Intervention, load_intervention
from .heads import HeadBias, HeadScale
from .residual import Ablate, Steer, orthonormalize

__all__ = ["Ablate", "Steer", "HeadScale", "HeadBias", "Compose", "Intervention", "load_intervention",
           "orthonormalize", "MASKS"]
