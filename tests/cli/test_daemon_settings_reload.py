"""A running daemon applies edits of its settings file (what `vram-steward config`, `discover --manage` or
an editor write) without a restart, and runs on with what it had when the edit does not load."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.engine_procs import read_until, run_app, start_daemon, stop


def test_the_daemon_applies_an_edit_and_survives_a_broken_one(tmp_path: Path) -> None:
    config = tmp_path / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("# my settings\nresume_cooldown_secs = 30\n")
    proc = start_daemon(tmp_path, "--port", "0")
    try:
        read_until(proc, "resident on GPU 0", 30)
        config.write_text("# my settings\nresume_cooldown_secs = 5\n")
        out = read_until(proc, "SettingsApplied", 15)
        assert "resume_cooldown_secs" in out.split("SettingsApplied", 1)[1].splitlines()[0], out
        config.write_text("# my settings\nresume_cooldown_secs = -5\n")
        out = read_until(proc, "does not load", 15)
        assert "running on with the previous settings" in out, out
        logged = "".join(p.read_text() for p in (tmp_path / "log").glob("*.log"))  # every problem, named
        assert "resume_cooldown_secs = -5: expected a number of seconds" in logged, logged[-2000:]
        assert proc.poll() is None, "a broken edit never stops the daemon"
        status = run_app(tmp_path, "status")  # still answers, from the engine, and says what is wrong
        assert status.returncode == 0, status.stderr
        assert "From the running daemon" in status.stdout and "does not load" in status.stderr, status
    finally:
        rest = stop(proc)
    assert "stopped." in rest
    assert config.read_text() == "# my settings\nresume_cooldown_secs = -5\n", "never overwritten"
