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


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux's /proc/cpuinfo")
def test_cpu_flags_are_this_machines():
    flags = _hardware.cpu_flags()
    line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    assert flags == frozenset(line.split(":", 1)[1].split()) and "fpu" in flags
