"""The Prometheus alert rules: `promtool check rules`, `promtool test rules` with a unit test per alert, and
the rules only use metrics that VRAM Steward exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.core.api.metrics import DOCUMENTED

RULES_DIR = Path(__file__).resolve().parents[2] / "resources" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found (Debian package `prometheus`): alert rules NOT checked"
)


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def alert_names(text: str) -> list[str]:
    return re.findall(r"^\s*- alert:\s*(\w+)", text, flags=re.MULTILINE)


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names((RULES_DIR / 'alerts.yml').read_text()))} rules found" in result.stdout


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_and_the_study_alerts_exist() -> None:
    alerts = alert_names((RULES_DIR / "alerts.yml").read_text())
    tested = set(re.findall(r"alertname:\s*(\w+)", (RULES_DIR / "alerts_test.yml").read_text()))
    assert {"HighVramAllocationFailures", "LowVramHeadroom", "EvictionsFlapping"} <= set(alerts)
    assert set(alerts) <= tested


def test_rules_use_only_exported_metrics() -> None:
    exprs = re.findall(r"expr:\s*(.+)", (RULES_DIR / "alerts.yml").read_text())
    used = {name for expr in exprs for name in re.findall(r"\b((?:vram|gpu|nvml|model)_\w+)", expr)}
    assert used and used <= set(DOCUMENTED), used - set(DOCUMENTED)


@needs_promtool
def test_the_unit_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    """The unit tests bite: with LowVramHeadroom at < 2 GiB instead of < 0 they must fail."""
    rules = (RULES_DIR / "alerts.yml").read_text()
    broken = rules.replace("expr: vram_headroom_bytes < 0", "expr: vram_headroom_bytes < 2147483648")
    assert broken != rules
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(RULES_DIR / "alerts_test.yml", tmp_path / "alerts_test.yml")
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "LowVramHeadroom" in result.stdout + result.stderr


def test_grafana_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads((RULES_DIR.parent / "grafana" / "vram-steward.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\b((?:vram|gpu|nvml|model)_\w+)", expr)}
    exported = set(DOCUMENTED) | {
        f"{n}_bucket" for n, (kind, _, _) in DOCUMENTED.items() if kind == "histogram"
    }
    assert used and used <= exported, used - exported
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
