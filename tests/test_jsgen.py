"""The browser client's constants are generated from the Python source and never stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tether.jsgen import TARGET, render


def test_the_generated_constants_are_current() -> None:
    assert TARGET.read_text() == render(), (
        "src/tether/static/tether-constants.js is stale: run `make constants`"
    )


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    # The command a maintainer runs agrees with the test: 0 when current, 1 once it differs.
    target = tmp_path / "tether-constants.js"
    jsgen = [sys.executable, "-m", "tether.jsgen", "--target", str(target)]
    subprocess.run(jsgen, check=True, capture_output=True)
    assert subprocess.run([*jsgen, "--check"], capture_output=True).returncode == 0
    target.write_text(target.read_text().replace("LATE_BY = 1.0;", "LATE_BY = 3;"))
    stale = subprocess.run([*jsgen, "--check"], capture_output=True, text=True)
    assert stale.returncode == 1 and "make constants" in stale.stderr
