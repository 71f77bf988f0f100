"""Chat clients for the explainers and scorers.

:class:`ChatClient` speaks the OpenAI chat-completions protocol through the official ``openai``
package (streaming off; its retries with backoff on connection errors, 408/409/429/5xx and
``Retry-After``), so it works with OpenAI, vLLM (``vllm serve ...`` -> ``http://host:8000/v1``), Ollama
(``http://localhost:11434/v1``), llama.cpp's server and similar. Configuration comes from the
arguments or the environment:

=====================  ===========================================  ==========================
setting                environment (first found)                    default
=====================  ===========================================  ==========================
base URL               ``WORKBENCH_LLM_BASE_URL``, ``OPENAI_BASE_URL``  ``https://api.openai.com/v1``
model                  ``WORKBENCH_LLM_MODEL``, ``OPENAI_MODEL``        (required)
API key                ``WORKBENCH_LLM_API_KEY``, ``OPENAI_API_KEY``    none (local servers)
=====================  ===========================================  ==========================

The API key is kept in a private attribute and only ever put in the ``Authorization`` header: it
is not in ``repr``, not in :meth:`ChatClient.describe` (what artifacts record), not in log lines,
and is masked out of error messages; copying or pickling a client drops it.

:class:`LocalChatClient` answers the same ``chat(messages)`` call with the local model
(``wb.generate``), for fully offline use.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model import Workbench

log = logging.getLogger(__name__)

ENV_BASE_URL = ("WORKBENCH_LLM_BASE_URL", "OPENAI_BASE_URL")
ENV_MODEL = ("WORKBENCH_LLM_MODEL", "OPENAI_MODEL")
ENV_API_KEY = ("WORKBENCH_LLM_API_KEY", "OPENAI_API_KEY")
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class ChatClientError(RuntimeError):
    """The server could not be reached or answered with an error (the key is never in the message)."""


def _env(names: Sequence[str]) -> str | None:
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return None


def redact_url(url: str) -> str:
    """The URL without user:password and without query parameters (which may carry keys)."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return urllib.parse.urlunsplit((p.scheme, host, p.path, "", ""))


class ChatClient:
    """OpenAI-compatible chat-completions client.

    Args:
        base_url: e.g. ``http://localhost:11434/v1``; ``/chat/completions`` is appended.
        model: the served model name. api_key: bearer token (optional for local servers).
        temperature, max_tokens: sampling defaults for :meth:`chat`.
        timeout: seconds per request. max_retries: retries on connection errors, timeouts and
            408/409/429/5xx (``openai``'s exponential backoff, honouring ``Retry-After``).
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None, *,
                 temperature: float = 0.0, max_tokens: int = 256, timeout: float = 60.0, max_retries: int = 2):
        self.base_url = (base_url or _env(ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")
        self.model = model or _env(ENV_MODEL)
        if not self.model:
            raise ValueError(f"no model name: pass model= or set {ENV_MODEL[0]} (e.g. 'llama3.1:8b' for Ollama)")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {redact_url(self.base_url)!r}")
        self.__key = api_key if api_key is not None else _env(ENV_API_KEY)
        self.temperature, self.max_tokens = temperature, max_tokens
        self.timeout, self.max_retries = timeout, max_retries
        self._sdk = None  # the openai.OpenAI client, made on first use

    # -- the key stays out of every representation ------------------------------------
    @property
    def has_key(self) -> bool:
        return bool(self.__key)

    def __repr__(self) -> str:
        return (f"ChatClient(base_url={redact_url(self.base_url)!r}, model={self.model!r}, "
                f"api_key={'<set>' if self.has_key else '<none>'})")

    def describe(self) -> dict:
        """What an artifact may record about the client: server and model, never the key."""
        return {"base_url": redact_url(self.base_url), "model": self.model}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_ChatClient__key", None)
        state["_sdk"] = None  # holds the key
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__key = None

    def _mask(self, text: str) -> str:
        return text.replace(self.__key, "***") if self.__key else text

    # -- requests -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _client(self):
        if self._sdk is None:
            import openai

            self._sdk = openai.OpenAI(base_url=self.base_url, timeout=self.timeout, max_retries=self.max_retries,
                                      api_key=self.__key or "unused")  # keyless: the header is omitted per request
        return self._sdk

    def complete(self, messages: Sequence[dict], **params) -> dict:
        """One chat completion (streaming off); returns the response as a dict."""
        import openai

        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "temperature": self.temperature,
                "max_tokens": self.max_tokens, **params}
        t0 = time.perf_counter()
        try:
            no_auth: dict[str, Any] = {} if self.__key else {"extra_headers": {"Authorization": openai.Omit()}}
            resp = self._client().chat.completions.create(stream=False, **body, **no_auth)
        except openai.APIStatusError as err:
            detail = self._mask(err.response.text[:500])
            raise ChatClientError(f"HTTP {err.status_code} from {redact_url(self.url)}: {detail}") from None
        except openai.APIConnectionError as err:  # includes timeouts
            what = "timed out" if isinstance(err, openai.APITimeoutError) else "cannot reach"
            cause = self._mask(str(err.__cause__ or err))
            raise ChatClientError(f"{what} {redact_url(self.url)} after {self.max_retries + 1} attempt(s): {cause}") from None
        except json.JSONDecodeError as err:
            raise ChatClientError(f"{redact_url(self.url)} answered with invalid JSON ({err.msg})") from None
        except openai.APIError as err:  # a 200 whose body is not a completion
            raise ChatClientError(f"{redact_url(self.url)} answered with something that is not a chat completion: "
                                  f"{self._mask(str(err))[:300]}") from None
        if not hasattr(resp, "model_dump"):  # e.g. a body that is not JSON comes back as text
            raise ChatClientError(f"{redact_url(self.url)} answered with invalid JSON: {self._mask(str(resp))[:200]!r}")
        out = resp.model_dump()
        log.debug("POST %s model=%s messages=%d in %.2fs", redact_url(self.url), self.model, len(body["messages"]),
                  time.perf_counter() - t0)
        return out

    def chat(self, messages: Sequence[dict] | str, **params) -> str:
        """The assistant's reply text to ``messages`` (a list of ``{"role", "content"}`` or one user string)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        out = self.complete(messages, **params)
        try:
            return out["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as err:
            raise ChatClientError(f"unexpected response shape from {redact_url(self.url)}: "
                                  f"{self._mask(json.dumps(out)[:300])}") from err


class LocalChatClient:
    """``chat(messages) -> str`` with the local model (greedy ``wb.generate``). The system and user
    turns are joined into one user message (the model's chat template adds its own system prompt)."""

    def __init__(self, wb: Workbench, max_new_tokens: int = 48):
        self.wb, self.max_new_tokens = wb, max_new_tokens
        self.model = f"local:{wb.model_id}"

    def __repr__(self) -> str:
        return f"LocalChatClient({self.wb.model_id!r})"

    def describe(self) -> dict:
        return {"model": self.model}

    def chat(self, messages: Sequence[dict] | str, **params) -> str:
        if isinstance(messages, str):
            text = messages
        else:
            text = "\n\n".join(m["content"] for m in messages if m.get("role") in ("system", "user"))
        return self.wb.generate([text], max_new_tokens=params.get("max_tokens", self.max_new_tokens),
                                progress=False)[0]
