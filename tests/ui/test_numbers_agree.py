"""One snapshot, every place that shows it: the tray (tooltip, menu line), the dashboard (gauge, process
table, model list), `vram-steward status`, an event's text and its notification all say the same numbers,
in one unit system (binary GiB/MiB, as nvidia-smi), and those numbers are NVML's (issue 13, item 7).

The snapshot is sampled by the REAL nvidia-ml-py against the stand-in libnvidia-ml.so.1, and NVML is asked
again directly (memory info v2, as nvidia-smi does) for the figures to compare with. The driver reserves
memory that is neither used nor free: free is NVML's free everywhere, never total minus used."""

from __future__ import annotations

import dataclasses
import re

import pynvml
import pytest
from PySide6.QtWidgets import QMenu
from pytestqt.qtbot import QtBot

from app.core import events as ev
from app.core.engine.status import format_status_table
from app.core.gpu.nvml import NvmlBackend
from app.core.notify.messages import describe
from app.core.notify.text import notification_for
from app.core.settings import Settings
from app.core.units import GiB, MiB, format_bytes, format_usage
from app.ui.gauges import VramGauge
from app.ui.popup import TrayPopup
from app.ui.presenter import present, process_rows
from app.ui.tray import fill_menu
from tests.fixtures import ui_snapshots as snaps
from tests.fixtures.fake_nvml import FakeNvml, gpu_line, proc_line

OURS = 8_600_000_000  # a model as NVML counts our host's bytes (8.0 GiB; "8.6 GB" in decimal units)
DESKTOP = 200 * MiB
GAME = 1536 * MiB
RESERVED = 300 * MiB  # the driver's own
TOTAL = 12 * GiB


@pytest.fixture
def nvml_world(fake_nvml: FakeNvml) -> FakeNvml:
    fake_nvml.write(
        gpu_line(
            0,
            name="NVIDIA_GeForce_RTX_3060",
            uuid="GPU-agree",
            total=TOTAL,
            reserved=RESERVED,
            used=OURS + DESKTOP + GAME,
        )
        + proc_line(snaps.OUR_PID, OURS, kind="compute", name="vram-steward-host")
        + proc_line(1201, DESKTOP, kind="graphics", name="Xorg")
        + proc_line(4242, GAME, kind="graphics", name="Cyberpunk2077.exe")
    )
    return fake_nvml


def nvml_figures() -> tuple[int, int, int, dict[int, int]]:
    """(total, used, free, pid -> bytes) straight from NVML, as nvidia-smi reads them."""
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        processes = [
            *pynvml.nvmlDeviceGetComputeRunningProcesses(handle),
            *pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle),
        ]
        return (
            int(memory.total),
            int(memory.used),
            int(memory.free),
            {int(p.pid): int(p.usedGpuMemory) for p in processes},
        )
    finally:
        pynvml.nvmlShutdown()


def test_tray_dashboard_status_events_and_notifications_agree_with_nvml(
    nvml_world: FakeNvml, qtbot: QtBot
) -> None:
    settings = Settings()
    backend = NvmlBackend()
    try:
        telemetry = backend.sample()
    finally:
        backend.close()
    total, used, free, by_pid = nvml_figures()
    assert free == TOTAL - RESERVED - (OURS + DESKTOP + GAME)  # NVML's own: the reserve is not free
    ours = by_pid[snaps.OUR_PID]
    snapshot = dataclasses.replace(
        snaps.snapshot("active", models=(snaps.model(size_bytes=ours),)), telemetry=telemetry
    )
    (gpu,) = snapshot.telemetry.gpus
    assert (gpu.total_bytes, gpu.used_bytes, gpu.free_bytes) == (total, used, free)

    free_text, usage_text, ours_text = format_bytes(free), format_usage(used, total), format_bytes(ours)
    assert (free_text, usage_text, ours_text) == ("2.0 GiB", "9.7 GiB / 12.0 GiB", "8.0 GiB")
    assert format_bytes(total - used) == "2.3 GiB"  # what a gauge that forgot the driver's reserve said
    headroom_text = format_bytes(settings.headroom_bytes(total))

    # the tray: tooltip and menu line
    view = present(snapshot, settings)
    (gpu_view,) = view.gpus
    assert gpu_view.tooltip_line == f"GPU 0: {usage_text} used, {free_text} free"
    assert gpu_view.status_line == f"GPU 0: {usage_text} used, {ours_text} ours"
    assert gpu_view.tooltip_line in view.tooltip.splitlines()
    assert view.models[0].menu_text == f"llama-8b: resident ({ours_text})"

    # the dashboard: the gauge (its tooltip and legend), the process table, the model list
    segments = {s.key: s.bytes for s in gpu_view.segments}
    assert segments["free"] == free and segments["ours"] == ours and segments["reserved"] == RESERVED
    gauge = VramGauge()
    qtbot.addWidget(gauge)
    gauge.set_view(gpu_view)
    assert f"free {free_text}" in gauge.describe() and f"ours {ours_text}" in gauge.describe()
    assert f"headroom {headroom_text}" in gauge.describe()
    assert f"free {free_text}" in gauge.legend() and gauge.toolTip() == gauge.describe()
    rows = {row.pid: row.vram_text for row in process_rows(snapshot)}
    assert rows == {
        snaps.OUR_PID: ours_text,
        1201: format_bytes(by_pid[1201]),
        4242: format_bytes(by_pid[4242]),
    }
    assert view.models[0].size_text == ours_text

    # `vram-steward status`
    table = format_status_table(snapshot.to_status(settings))
    assert f"{usage_text} used, {free_text} free" in table
    assert f"headroom kept free: {headroom_text}" in table
    process_lines = {int(line.split()[0]): line for line in table.splitlines() if line.strip()[:1].isdigit()}
    for pid, text in rows.items():
        assert f" {text} " in process_lines[pid] + " "
    assert any(line.strip().startswith("llama-8b") and ours_text in line for line in table.splitlines())

    # the eviction of that model: event text (daemon log, dashboard events, replay) and notification
    evicted = ev.ModelsEvicted(
        at=1.0, gpu=0, models=("llama-8b",), reason="game", trigger="Cyberpunk 2077", freed_bytes=ours
    )
    notification = notification_for(evicted)
    assert notification is not None
    assert notification.title == f"Cyberpunk 2077 started: freed {ours_text} (1 model)"
    assert describe(evicted).startswith(f"Cyberpunk 2077 started: freed {ours_text} (1 model: llama-8b)")
    # nvidia-smi prints MiB: the same figure as ours, rounded the same way
    assert f"{ours / MiB / 1024:.1f} GiB" == ours_text


DECIMAL_UNIT = re.compile(r"\d\s?(?:kB|KB|MB|GB|TB)\b")


def test_no_decimal_units_anywhere_a_user_reads_sizes(nvml_world: FakeNvml, qtbot: QtBot) -> None:
    """Issue 16: "8.0 GiB" in the menu and "8.6 GB" in a notification, both in one title, was the bug.
    Every text a user reads a size in (menu, tooltip, popup, gauge, notifications, events, `status`) uses
    the one formatter's binary units."""
    settings = Settings()
    backend = NvmlBackend()
    try:
        telemetry = backend.sample()
    finally:
        backend.close()
    snapshot = dataclasses.replace(
        snaps.snapshot("active", models=(snaps.model(size_bytes=OURS),)), telemetry=telemetry
    )
    view = present(snapshot, settings)
    menu = QMenu()
    fill_menu(menu, view, _NoActions())  # type: ignore[arg-type]
    popup = TrayPopup(lambda: None)
    qtbot.addWidget(popup)
    popup.set_view(view)
    gauge = popup.findChildren(VramGauge)[0]
    pressure = ev.ModelsEvicted(
        at=1.0, gpu=0, models=("llama-8b",), reason="pressure", trigger="blender (pid 77) grew 1.5 GiB",
        freed_bytes=OURS, trigger_exe="blender",
    )  # fmt: skip
    refused = ev.LoadRefused(at=1.0, model="llama-8b", gpu=0, reason="insufficient_vram",
                             need_bytes=OURS, available_bytes=2 * GiB)  # fmt: skip
    texts = [a.text() for a in menu.actions()] + [view.tooltip, gauge.describe(), gauge.legend()]
    for event in (pressure, refused):
        note = notification_for(event)
        assert note is not None
        texts += [note.title, note.body, describe(event)]
    texts.append(format_status_table(snapshot.to_status(settings)))
    joined = "\n".join(texts)
    assert not DECIMAL_UNIT.search(joined), DECIMAL_UNIT.findall(joined)
    assert joined.count(format_bytes(OURS)) >= 5  # "8.0 GiB": the model in the menu, notifications, events


class _NoActions:
    def __getattr__(self, name: str) -> object:
        return lambda *args: None
