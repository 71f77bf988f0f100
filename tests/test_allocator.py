"""The allocator setting: applied once on glibc, switchable for the benchmarks, off on request."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = ("import ctypes, json\nfrom workbench import _allocator as a\n"
        "first = a.keep_freed_memory()\nprint(json.dumps([first, a.keep_freed_memory(), a.switch(False), a.switch(True)]))")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_applies_once_and_can_be_turned_off():
    import json

    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [True, True, True, True]
    off = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True,
                         env={"WORKBENCH_MALLOC": "default", "PATH": ""}).stdout
    assert json.loads(off)[0] is False
