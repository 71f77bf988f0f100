"""The second backend: nnsight tracing of the plain HF model, with TransformerLens site names.

Site names map to module paths of Llama-style HF models (Llama, SmolLM2, Qwen2, Mistral):
``blocks.{l}.hook_resid_post`` -> ``model.layers[l].output`` and so on (see ``_ACCESS``).
For models that do not fit one machine, the same traces run on NDIF's servers:
``Workbench.load("meta-llama/Llama-3.1-8B", backend="nnsight", remote=True)`` (an NDIF API key in
``NDIF_API_KEY`` and a model NDIF hosts; the weights stay remote, only the config and tokenizer
come from the hub). :func:`connect_remote` checks both first and fails with one clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

from .base import Backend, HookFn, StopForward

if TYPE_CHECKING:
    from nnsight.modeling.transformers import TransformersModel

# kind -> (rank in a layer's execution order, module path under the layer, "input" | "output").
_ACCESS = {
    "hook_resid_pre": (0, "", "input"),
    "attn.hook_z": (1, "self_attn.o_proj", "input"),
    "hook_attn_out": (2, "self_attn", "output"),
    "hook_resid_mid": (3, "post_attention_layernorm", "input"),
    "mlp.hook_post": (4, "mlp.down_proj", "input"),
    "hook_mlp_out": (5, "mlp", "output"),
    "hook_resid_post": (6, "", "output"),
}


class RemoteUnavailable(RuntimeError):
    """NDIF cannot be used: no API key, the service is unreachable, or the model is not hosted."""


def connect_remote(name: str, timeout: float = 5.0):
    """``(meta model, tokenizer, nnsight.LanguageModel)`` for a model hosted on NDIF, after checking
    the API key and the service; raises :class:`RemoteUnavailable` with the reason otherwise."""
    import nnsight
    from nnsight import CONFIG

    if not CONFIG.API.APIKEY:
        raise RemoteUnavailable("remote=True needs an NDIF API key: set NDIF_API_KEY (get one at "
                                "https://login.ndif.us) or run `python -m nnsight login`")
    try:
        from nnsight.ndif import _get

        status = _get("/status", timeout=(timeout, 3 * timeout))
    except Exception as err:  # noqa: BLE001  (httpx raises several kinds: all mean "not reachable")
        raise RemoteUnavailable(f"cannot reach NDIF at {CONFIG.API.HOST}: {type(err).__name__}: {err}") from None
    hosted = sorted({v.get("repo_id") for v in (status.get("deployments") or {}).values() if v.get("repo_id")})
    if name not in hosted:
        raise RemoteUnavailable(f"{name!r} is not hosted on NDIF now; hosted: {', '.join(hosted) or 'none'}")
    lm = nnsight.LanguageModel(name)  # meta weights: config and tokenizer only
    return lm._model, lm.tokenizer, lm


class NNsightBackend(Backend):
    name = "nnsight"

    def __init__(self, model, tokenizer, model_id: str, remote: object = None):
        """``remote``: an ``nnsight.LanguageModel`` from :func:`connect_remote`; traces then run on NDIF."""
        super().__init__(model, tokenizer, model_id)
        import nnsight

        self.remote = remote is not None
        self.nn = cast("TransformersModel", remote) if remote is not None else nnsight.TransformersModel(model, tokenizer=tokenizer)
        cfg = model.config
        self.n_heads, self.d_head = cfg.num_attention_heads, getattr(cfg, "head_dim", None) or (
            cfg.hidden_size // cfg.num_attention_heads
        )
        self.valid_hooks = {
            f"blocks.{layer}.{kind}" for layer in range(cfg.num_hidden_layers) for kind in _ACCESS
        }
        self._installed: list[tuple[str, HookFn]] = []

    def installed_count(self) -> int:
        return len(self._installed)

    @contextmanager
    def install(self, hooks: Sequence[tuple[str, HookFn]]):
        # nnsight has no persistent hooks: installed ones are applied inside every `run`.
        n = len(self._installed)
        self._installed.extend(hooks)
        try:
            yield
        finally:
            del self._installed[n:]

    def _envoy(self, layer: int, path: str):
        envoy = self.nn.model.layers[layer]
        for part in filter(None, path.split(".")):
            envoy = getattr(envoy, part)
        return envoy

    def _apply(self, name: str, fns: list[HookFn]) -> None:
        _, layer, kind = name.split(".", 2)
        _, path, where = _ACCESS[kind]
        envoy = self._envoy(int(layer), path)
        value = envoy.input if where == "input" else envoy.output
        rest = None
        if isinstance(value, tuple):  # attention returns (output, weights)
            value, rest = value[0], value[1:]
        shape = value.shape
        t = value.reshape(*shape[:-1], self.n_heads, self.d_head) if kind == "attn.hook_z" else value
        changed = False
        for fn in fns:
            out = fn(t)
            if out is not None:
                t, changed = out, True
        if changed:
            new = t.reshape(shape) if kind == "attn.hook_z" else t
            new = (new, *rest) if rest is not None else new
            if where == "input":
                envoy.input = new
            else:
                envoy.output = new

    def run(self, input_ids, attention_mask, hooks=(), **kwargs):
        grouped: dict[str, list[HookFn]] = {}
        for name, fn in [*self._installed, *hooks]:
            grouped.setdefault(name, []).append(fn)

        def order(name: str) -> tuple[int, int]:
            _, layer, kind = name.split(".", 2)
            return int(layer), _ACCESS[kind][0]

        names = sorted(grouped, key=order)
        result: dict = {}  # nnsight runs the body in its own frame: results go through an object
        if self.remote:
            kwargs.setdefault("remote", True)
        with self.nn.trace(input_ids=input_ids, attention_mask=attention_mask, **kwargs) as tracer:
            if self._apply_all(names, grouped):
                tracer.stop()
            else:
                result["output"] = self.nn.output.save()
        return result.get("output")

    def _apply_all(self, names: list[str], grouped: dict[str, list[HookFn]]) -> bool:
        """Apply hooks in execution order; True if one asked to stop the forward."""
        try:
            for name in names:
                self._apply(name, grouped[name])
        except StopForward:
            return True
        return False
