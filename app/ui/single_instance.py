"""One running tray app per user: a second launch hands over to the first and exits.

As Vorta does, through a local socket (QLocalServer/QLocalSocket) in the user's 0700 runtime folder, not
through the HTTP API: it works before the engine starts, needs no token, and does not depend on the API
being enabled. The second launch sends "show"; the first brings its dashboard to the front. Which engine
runs (tray or daemon) is decided by the engine lock (app.core.instance), taken right after this hand-over.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

logger = logging.getLogger(__name__)

SHOW = b"show\n"


def socket_name(suffix: str = "") -> str:
    """The socket's path in this user's 0700 runtime folder (never in /tmp, where another user could plant
    one): $XDG_RUNTIME_DIR/vram-steward/tray.sock. Creates the folder."""
    from app.core import paths
    from app.core.instance import private_runtime_dir

    private_runtime_dir()
    socket = paths.tray_socket_file()
    return str(socket.with_name(socket.name + suffix)) if suffix else str(socket)


def hand_over_to_running(name: str | None = None, timeout_ms: int = 500) -> bool:
    """True when another instance listens and took the "show" request (then this launch should exit)."""
    socket = QLocalSocket()
    socket.connectToServer(name or socket_name())
    if not socket.waitForConnected(timeout_ms):
        return False
    socket.write(SHOW)
    socket.flush()
    socket.waitForBytesWritten(timeout_ms)
    socket.disconnectFromServer()
    return True


class SingleInstance(QObject):
    """Listens for later launches; emits `show_requested` when one asks."""

    show_requested = Signal()

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.name = name or socket_name()
        self.server = QLocalServer(self)
        self.server.newConnection.connect(self._accept)

    def listen(self) -> bool:
        """Start listening; a stale socket file left by a crashed instance is removed first."""
        if self.server.listen(self.name):
            return True
        QLocalServer.removeServer(self.name)
        ok = self.server.listen(self.name)
        if not ok:
            logger.warning("single-instance socket %s: %s", self.name, self.server.errorString())
        return ok

    def close(self) -> None:
        self.server.close()

    def _accept(self) -> None:
        """Read the short request at once (the other launch wrote it right after connecting), then close."""
        while self.server.hasPendingConnections():
            socket = self.server.nextPendingConnection()
            if socket is None:
                break
            if not socket.bytesAvailable():
                socket.waitForReadyRead(500)
            data = bytes(socket.readAll().data())
            socket.disconnectFromServer()
            socket.deleteLater()
            if b"show" in data:
                logger.info("another launch asked to show the dashboard")
                self.show_requested.emit()
