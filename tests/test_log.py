"""The package logger prints INFO to stdout unless the application configured logging itself."""

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)


def test_messages_show_by_default_and_defer_to_an_application_config():
    shown = _run("from workbench._log import get_logger; get_logger('workbench.train').info('step 4')")
    assert shown.stdout == "step 4\n" and shown.stderr == ""
    own = _run("import logging; logging.basicConfig(level=logging.WARNING)\n"
               "from workbench._log import get_logger; log = get_logger('workbench.train')\n"
               "log.info('hidden'); log.warning('kept')")
    assert own.stdout == "" and own.stderr == "WARNING:workbench.train:kept\n"
