"""workbench._hardware: where bf16 pays is read from the CPU's flags, the same way every call."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench import _hardware


def test_fast_bf16_follows_the_amx_flag(monkeypatch):
    monkeypatch.setattr(_hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not _hardware.fast_bf16("cpu")
    monkeypatch.setattr(_hardware, "cpu_flags", lambda: frozenset({"avx512f", "amx_tile", "amx_bf16"}))
    assert _hardware.fast_bf16("cpu") and _hardware.fast_bf16()
    assert not _hardware.fast_bf16("meta")


def _flags_line() -> str | None:
    path = Path("/proc/cpuinfo")
    lines = path.read_text().splitlines() if path.is_file() else []
    return next((x for x in lines if x.startswith("flags")), None)


@pytest.mark.skipif(_flags_line() is None, reason="needs an x86 Linux /proc/cpuinfo with a flags line")
def test_cpu_flags_are_this_machines():
    flags = _hardware.cpu_flags()
    assert flags == frozenset(str(_flags_line()).split(":", 1)[1].split()) and "fpu" in flags
