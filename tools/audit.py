"""`make audit`: pip-audit over the installed set (the .venv this runs from), with the advisory database's
reachability told apart from the result.

pip-audit asks PyPI's JSON API (or OSV with `-s osv`) about each installed distribution. Offline, or behind
a mirror that serves packages but not that API, it either fails with a connection error or reports every
package as "not found on PyPI" and then "No known vulnerabilities found": nothing was checked, but it reads
like a pass. This wrapper says so plainly and exits 0 (an unreachable database is not a finding); it exits
1 when a known vulnerability is found, and 2 when pip-audit itself is missing or fails otherwise.

    python tools/audit.py [pip-audit options]      e.g. make audit AUDIT_ARGS="-s osv"

PIP_AUDIT (environment) replaces the pip-audit command (tests use a stand-in).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from typing import Any

TIMEOUT_S = 600
# how requests / urllib3 / pip-audit word a database that cannot be reached
UNREACHABLE = (
    "ConnectionError",
    "NameResolutionError",
    "Name or service not known",
    "Temporary failure in name resolution",
    "Max retries exceeded",
    "Connection refused",
    "Network is unreachable",
    "timed out",
    "ReadTimeout",
    "ConnectTimeout",
    "ProxyError",
    "SSLError",
)
NOT_FOUND = "not found on PyPI"


def notice(text: str) -> None:
    print(f"audit: NOTICE: {text}", flush=True)


def main(argv: list[str]) -> int:
    command = shlex.split(os.environ.get("PIP_AUDIT", ""))
    if not command:
        if importlib.util.find_spec("pip_audit") is None:
            print(
                "audit: pip-audit is not installed here: .venv/bin/pip install -e '.[dev]'", file=sys.stderr
            )
            return 2
        command = [sys.executable, "-m", "pip_audit"]
    args = [
        *command,
        "--skip-editable",
        "--progress-spinner",
        "off",
        "--desc",
        "off",
        "--format",
        "json",
        *argv,
    ]
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        notice(f"the advisory database did not answer within {TIMEOUT_S} s: NOTHING WAS CHECKED.")
        return 0
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        report = {}
    dependencies = report.get("dependencies") if isinstance(report, dict) else None
    if not isinstance(dependencies, list):
        if any(marker in result.stderr for marker in UNREACHABLE):
            last = result.stderr.strip().splitlines()[-1:] or [""]
            notice(
                f"the advisory database is not reachable (offline?): NOTHING WAS CHECKED.\n  {last[0][:300]}"
            )
            return 0
        print(f"audit: pip-audit failed (exit {result.returncode}):\n{result.stderr}", file=sys.stderr)
        return 2
    return summarize(dependencies)


def summarize(dependencies: list[dict[str, Any]]) -> int:
    audited = [d for d in dependencies if "skip_reason" not in d]
    not_found = [d for d in dependencies if NOT_FOUND in str(d.get("skip_reason", ""))]
    vulnerable = [d for d in audited if d.get("vulns")]
    if vulnerable:
        count = sum(len(d["vulns"]) for d in vulnerable)
        print(
            f"audit: {count} known vulnerabilities in {len(vulnerable)} of {len(audited)} installed packages:"
        )
        for dep in vulnerable:
            for vuln in dep["vulns"]:
                fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed release yet"
                aliases = ", ".join(vuln.get("aliases") or [])
                print(
                    f"  {dep['name']} {dep.get('version', '?')}: {vuln.get('id')} ({aliases}) "
                    f"fixed in: {fixed}"
                )
        return 1
    if not audited and not_found:
        notice(
            f"the advisory database is not reachable: every one of the {len(not_found)} installed packages "
            "came back 'not found on PyPI' (offline, or a mirror without PyPI's JSON API). "
            "NOTHING WAS CHECKED; "
            'where osv.dev is reachable, try: make audit AUDIT_ARGS="-s osv"'
        )
        return 0
    print(f"audit: no known vulnerabilities in the {len(audited)} installed packages checked.")
    if not_found:
        names = ", ".join(sorted(str(d.get("name")) for d in not_found))
        notice(f"{len(not_found)} packages were not found in the advisory database and NOT checked: {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
