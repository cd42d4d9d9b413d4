"""The residency path (manager, host, settings records) runs where only the driver, CuPy and NVML exist:
it must import without the app's desktop dependencies (tomlkit, platformdirs, Qt)."""

from __future__ import annotations

import subprocess
import sys


def test_residency_imports_without_tomlkit_platformdirs_or_qt() -> None:
    code = (
        "import sys\n"
        "for name in ('tomlkit', 'platformdirs', 'PySide6'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        "import app.core.residency.manager, app.core.residency.host.process, app.core.settings\n"
        "from app.core.settings import ModelConfig, Settings\n"
        "print(Settings(models=(ModelConfig('m', '/dev/null', gpu=0),)).models[0].name)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "m"
