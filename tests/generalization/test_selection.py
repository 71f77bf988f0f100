"""Direction choice and the leakage check on planted data (independent closed forms / sklearn)."""

from __future__ import annotations

import numpy as np
import torch

from workbench.concepts import Concept, ConceptSet
from workbench.generalization.selection import attribute_scores, complement, leakage_check, probe_accuracy, probe_pick
from workbench.interventions import Ablate

SITE = "blocks.0.hook_resid_post"


def _planted(n=200, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    spur = torch.randint(0, 2, (n,), generator=g)
    case = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, d, generator=g) * 0.5
    x[:, 0] += 3 * spur          # dimension 0 carries the spurious attribute
    x[:, 1] += 3 * case          # dimension 1 the intended one
    return x, spur.tolist(), case.tolist()


def _cs(d=16):
    eye = torch.eye(d)
    return ConceptSet(Concept(f"pc/{i}", SITE, eye[i], "", None) for i in range(4))


def test_scores_and_probe_pick_find_the_spurious_dimension():
    x, spur, case = _planted()
    rows = attribute_scores(_cs(), {SITE: x}, {"spurious": spur, "intended": case})
    from sklearn.metrics import roc_auc_score

    assert abs(rows[0]["spurious"] - roc_auc_score(spur, x[:, 0].numpy())) < 1e-9
    assert rows[0]["spurious"] > 0.95 and rows[1]["intended"] > 0.95 and rows[2]["spurious"] < 0.65
    picked_cs, picked = probe_pick(_cs(), rows, "spurious", "intended")
    assert picked == ["pc/0"] and [c.selected for c in picked_cs] == [True, False, False, False]


def test_probe_pick_keeps_one_direction_per_site_when_none_passes():
    x, spur, case = _planted()
    rows = attribute_scores(_cs(), {SITE: x}, {"spurious": spur, "intended": case})
    _, picked = probe_pick(_cs(), rows, "spurious", "intended", min_score=0.999)
    assert picked == ["pc/0"]


def test_complement_removes_the_subspace_and_leakage_sees_what_is_left():
    x, spur, case = _planted()
    rest = complement(x, torch.eye(16)[:1])
    assert torch.allclose(rest[:, 0], torch.zeros(len(x)), atol=1e-6)
    assert torch.equal(rest[:, 2:], x[:, 2:])
    assert probe_accuracy(x, spur) > 0.95 and probe_accuracy(rest, spur) < 0.65
    # a copy of the spurious signal outside the ablated direction leaks
    leaky = x.clone()
    leaky[:, 5] += 3 * torch.tensor(spur, dtype=torch.float32)
    rows = leakage_check({SITE: leaky}, Ablate({SITE: torch.eye(16)[:1]}), {"spurious": spur})
    assert rows[0]["probe_full"] > 0.95 and rows[0]["probe_complement"] > 0.95
    rows = leakage_check({SITE: x}, Ablate({SITE: torch.eye(16)[:1]}), {"spurious": spur, "intended": case})
    by = {r["attribute"]: r for r in rows}
    assert by["spurious"]["probe_complement"] < 0.65 and by["intended"]["probe_complement"] > 0.95
    assert np.isclose(by["spurious"]["k"], 1)
