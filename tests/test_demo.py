"""The README's first command: the demonstration runs and shows what it claims."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("url", ["memory://demo", "file:///{tmp}/demo"])
def test_the_demo_runs_and_shows_members_leaders_fences_and_events(url, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "coordactors.demo", url.format(tmp=tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "members: ['worker-0', 'worker-1', 'worker-2']" in out
    assert "strictly increasing: True" in out
    assert "observer got LeaderElected" in out and "observer got MemberLeft" in out
    assert "done: every coordinator stopped" in out
    assert "Traceback" not in result.stderr
