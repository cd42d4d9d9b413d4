"""`make audit` (tools/audit.py over pip-audit): a finding fails it, an advisory database that cannot be
reached is a clear NOTICE and exit 0 (never a silent pass, never a failure), and `make test` does not run it.
pip-audit is replaced by a stand-in (PIP_AUDIT) that answers as the real one does in each case; the real one
runs too, and whatever the network here, it must end in a pass or a notice."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AUDIT = ROOT / "tools" / "audit.py"


def stand_in(tmp_path: Path, *, stdout: str = "", stderr: str = "", rc: int = 0) -> str:
    """A fake pip-audit printing what the real one prints in that case; returns the PIP_AUDIT command."""
    script = tmp_path / "fake_pip_audit.py"
    script.write_text(
        f"import sys\nsys.stdout.write({stdout!r})\nsys.stderr.write({stderr!r})\nsys.exit({rc})\n"
    )
    return f"{sys.executable} {script}"


def audit(command: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PIP_AUDIT", None)
    if command is not None:
        env["PIP_AUDIT"] = command
    return subprocess.run(
        [sys.executable, str(AUDIT), *args], capture_output=True, text=True, env=env, timeout=700, check=False
    )


def report(*dependencies: dict[str, object]) -> str:
    return json.dumps({"dependencies": list(dependencies), "fixes": []})


def test_a_known_vulnerability_fails_the_audit_naming_it(tmp_path: Path) -> None:
    vuln = {"id": "GHSA-cq5v-8q36-5273", "fix_versions": ["3.14.3"], "aliases": ["CVE-2026-0001"]}
    out = report(
        {"name": "aiohttp", "version": "3.14.1", "vulns": [vuln]},
        {"name": "psutil", "version": "7.0.0", "vulns": []},
    )
    result = audit(stand_in(tmp_path, stdout=out, stderr="Found 1 known vulnerability in 1 package\n", rc=1))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "aiohttp 3.14.1: GHSA-cq5v-8q36-5273" in result.stdout and "fixed in: 3.14.3" in result.stdout


def test_a_clean_audit_passes_and_says_how_many_were_checked(tmp_path: Path) -> None:
    out = report(
        {"name": "aiohttp", "version": "3.14.5", "vulns": []}, {"name": "psutil", "version": "7.0.0"}
    )
    result = audit(stand_in(tmp_path, stdout=out))
    assert result.returncode == 0
    assert "no known vulnerabilities in the 2 installed packages checked" in result.stdout
    assert "NOTICE" not in result.stdout


def test_offline_is_a_notice_and_exit_0(tmp_path: Path) -> None:
    error = (
        "Traceback (most recent call last):\n  ...\nrequests.exceptions.ConnectionError: HTTPSConnectionPool("
        "host='pypi.org', port=443): Max retries exceeded with url: /pypi/aiohttp/3.14.5/json (Caused by "
        "NameResolutionError(\"Failed to resolve 'pypi.org' ([Errno -2] Name or service not known)\"))\n"
    )
    result = audit(stand_in(tmp_path, stderr=error, rc=1))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NOTICE: the advisory database is not reachable" in result.stdout
    assert "NOTHING WAS CHECKED" in result.stdout


def test_a_mirror_that_knows_no_package_is_a_notice_not_a_silent_pass(tmp_path: Path) -> None:
    """What pip-audit prints here (PyPI's JSON API answers 404): every package skipped, then "No known
    vulnerabilities found" with exit 0. The audit must not read as a pass."""
    skipped = [
        {"name": n, "skip_reason": f"Dependency not found on PyPI and could not be audited: {n} (1.0)"}
        for n in ("aiohttp", "psutil", "yarl")
    ]
    result = audit(stand_in(tmp_path, stdout=report(*skipped), stderr="No known vulnerabilities found\n"))
    assert result.returncode == 0
    assert "NOTICE: the advisory database is not reachable" in result.stdout
    assert "3 installed packages" in result.stdout and "NOTHING WAS CHECKED" in result.stdout
    assert "no known vulnerabilities" not in result.stdout


def test_some_packages_unknown_are_named_as_not_checked(tmp_path: Path) -> None:
    out = report(
        {"name": "aiohttp", "version": "3.14.5", "vulns": []},
        {
            "name": "in-house",
            "skip_reason": "Dependency not found on PyPI and could not be audited: in-house",
        },
    )
    result = audit(stand_in(tmp_path, stdout=out))
    assert result.returncode == 0
    assert (
        "NOTICE: 1 packages were not found in the advisory database and NOT checked: in-house"
        in result.stdout
    )


def test_pip_audit_failing_for_another_reason_is_an_error(tmp_path: Path) -> None:
    result = audit(stand_in(tmp_path, stderr="pip-audit: error: unrecognized arguments: --bogus\n", rc=2))
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr


@pytest.mark.timeout(700)
def test_the_real_pip_audit_ends_in_a_pass_or_a_notice() -> None:
    pytest.importorskip("pip_audit")
    result = audit(None)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    if result.returncode == 1:  # a real finding: the floors in pyproject.toml need raising
        pytest.fail(f"known vulnerabilities in the installed set:\n{result.stdout}")
    assert "no known vulnerabilities" in result.stdout or "NOTICE" in result.stdout


def test_make_test_does_not_run_the_audit_and_make_audit_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = dict(re.findall(r"^([\w-]+):([^\n=]*)$", makefile, flags=re.MULTILINE))
    assert "audit" in targets and "audit" in makefile.split(".PHONY:")[1].splitlines()[0].split()
    seen: set[str] = set()
    pending = ["test"]
    while pending:  # every target `make test` reaches
        target = pending.pop()
        if target in seen or target not in targets:
            continue
        seen.add(target)
        pending.extend(targets[target].split())
    assert {"lint", "pytest"} <= seen and "audit" not in seen, seen


def test_the_aiohttp_floor_is_past_the_known_server_advisories() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"aiohttp>=([\d.]+)"', pyproject)
    assert floor is not None
    assert tuple(int(p) for p in floor.group(1).split(".")) >= (3, 14, 3)
    from importlib.metadata import version

    installed = tuple(int(p) for p in re.findall(r"\d+", version("aiohttp"))[:3])
    assert installed >= (3, 14, 3)  # what `pip install -e .` resolved here satisfies the floor
