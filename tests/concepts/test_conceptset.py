"""ConceptSet: round trip through the file, set operations, and refusal of a wrong width."""

import json
import math

import pytest
import torch
from safetensors import safe_open

from workbench.concepts import Concept, ConceptSet, WidthMismatch, provenance
from workbench.sites import UnknownSite

SITE = "blocks.1.hook_resid_post"


def make_set(d=64, k=4, site=SITE, seed=0, method="pca", model_id="tiny-llama"):
    g = torch.Generator().manual_seed(seed)
    prov = provenance(method, model_id, "abc123", {"k": k, "note": "<b>markup</b>"})
    return ConceptSet(Concept(f"{method}/{site}/{i}", site, torch.randn(d, generator=g), score=1.0 / (i + 1),
                              provenance=prov, meta={"component": i}) for i in range(k))


def test_directions_are_unit_and_stacked():
    cs = make_set()
    D = cs.directions(SITE)
    assert D.shape == (4, 64) and D.dtype == torch.float32
    assert torch.allclose(D.norm(dim=1), torch.ones(4), atol=1e-6)
    with pytest.raises(KeyError, match="no concepts at site"):
        cs.directions("blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="zero"):
        Concept("z", SITE, torch.zeros(64))


def test_round_trip(tmp_path):
    cs = make_set().union(make_set(d=64, k=2, site="blocks.0.hook_resid_post", method="diff_means"))
    cs[1].label, cs[1].selected = "weapons & <explosives>", True
    cs[2].meta["autointerp"] = {"label": "bombs", "detection": {"auroc": 0.9, "accuracy": 0.8}}
    cs[3].score = None
    path = cs.save(tmp_path / "set")  # suffix added
    assert path.name == "set.safetensors"
    back = ConceptSet.load(path)
    assert back.names == cs.names
    for a, b in zip(cs, back):
        assert torch.equal(a.direction, b.direction)
        assert (a.site, a.label, a.score, a.selected, a.provenance, a.meta) == \
               (b.site, b.label, b.score, b.selected, b.provenance, b.meta)
    assert back.for_ablation().names == [cs[1].name]
    # the header is plain JSON, the tensors are per site: no pickle anywhere
    with safe_open(str(path), framework="pt") as f:
        manifest = json.loads(f.metadata()["conceptset"])
        assert set(f.keys()) == {f"directions/{SITE}", "directions/blocks.0.hook_resid_post"}
    assert manifest["format"] == "workbench.conceptset/1" and len(manifest["concepts"]) == 6


def test_select_union_orthonormalize():
    a, b = make_set(k=3), make_set(k=3, seed=1)
    u = a.union(b)
    assert len(u) == 6 and len(set(u.names)) == 6  # clashing names got a suffix
    assert u.select([0, 2]).names == [a[0].name, a[2].name]
    assert len(u.select(lambda c: c.score > 0.4)) == 4
    q = u.orthonormalize()
    Q = q.directions(SITE)
    assert torch.allclose(Q @ Q.T, torch.eye(6), atol=1e-5)
    assert torch.allclose(Q[0], a[0].direction, atol=1e-6)  # first direction unchanged (QR order)
    assert (torch.einsum("kd,kd->k", Q, u.directions(SITE)) > 0).all()  # signs kept
    assert torch.allclose(q.basis(SITE), Q, atol=1e-5)
    # a dependent direction is dropped with a warning
    dep = ConceptSet([a[0].copy(), a[1].copy(), Concept("sum", SITE, a[0].direction + a[1].direction)])
    with pytest.warns(UserWarning, match="dropped"):
        assert len(dep.orthonormalize()) == 2
    assert dep.basis(SITE).shape == (2, 64)


def test_union_refuses_mixed_widths():
    with pytest.raises(WidthMismatch):
        make_set(d=64).union(make_set(d=32))


def test_wrong_width_refused(tiny, tmp_path):
    make_set(d=64).check(tiny)  # fits tiny-llama (d_model 64)
    wide = make_set(d=576, model_id="smollm2-135m-instruct")
    with pytest.raises(WidthMismatch) as err:
        wide.check(tiny)
    msg = str(err.value)
    assert "576" in msg and "64" in msg and SITE in msg and "smollm2-135m-instruct" in msg
    path = wide.save(tmp_path / "wide.safetensors")
    with pytest.raises(WidthMismatch):
        ConceptSet.load(path, wb=tiny)
    with pytest.raises(UnknownSite):
        make_set(site="blocks.7.hook_resid_post").check(tiny)  # tiny-llama has 2 layers
    with pytest.raises(WidthMismatch):  # a head site is d_head wide
        make_set(d=64, site="blocks.0.attn.hook_z[1]").check(tiny)
    make_set(d=16, site="blocks.0.attn.hook_z[1]").check(tiny)
    make_set(d=64, site="blocks.0.attn.hook_z").check(tiny)  # whole hook_z site: 4 heads x 16 flattened


def test_provenance_is_json_only():
    p = provenance("pca", "m", None, {"t": torch.tensor([1.0, 2.0]), "nan": math.nan})
    assert p["params"] == {"t": [1.0, 2.0], "nan": None}
    with pytest.raises(TypeError):
        provenance("pca", "m", None, {"obj": object()})
