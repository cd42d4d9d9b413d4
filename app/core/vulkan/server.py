"""The engine's end of the layer's socket: a Unix stream socket in the private runtime folder
($XDG_RUNTIME_DIR/vram-steward/vulkan.sock, the folder 0700), served on its own thread.

Every connection gets its own short-lived thread (at most MAX_CONNECTIONS at once; beyond that a connection is
closed at once, which the layer takes as "go on"). Its peer must be this user (SO_PEERCRED), its report one
line of at most MAX_LINE_BYTES read within READ_TIMEOUT_S; then `handler` decides how long the answer waits
(bounded by the layer's own deadline). A hung, slow or hostile client therefore holds only its own thread,
never the engine and never another client."""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app.core.vulkan.report import (
    MAX_LINE_BYTES,
    LayerReport,
    PeerCredentials,
    answer_line,
    may_report,
    parse_report,
    peer_credentials,
)

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
READ_TIMEOUT_S = 1.0  # the whole report must arrive within this (the layer sends it at once)
SEND_TIMEOUT_S = 0.5

Handler = Callable[[LayerReport, PeerCredentials], None]  # returns when it is time to answer


class LayerSocketServer:
    def __init__(self, path: Path, handler: Handler, *, own_uid: int | None = None) -> None:
        self.path = Path(path)
        self._handler = handler
        self._own_uid = os.getuid() if own_uid is None else own_uid
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.counts = {"answered": 0, "refused_peer": 0, "bad_report": 0, "busy": 0}
        self._counts_lock = threading.Lock()

    def start(self) -> None:
        """Bind (replacing a stale socket of ours: one engine per user holds the runtime folder) and serve.
        Raises OSError when the socket cannot be made."""
        from app.core.instance import private_runtime_dir

        private_runtime_dir(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise FileExistsError(f"{self.path} exists and is not a socket: not replacing it")
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(str(self.path))
            os.chmod(self.path, 0o600)
            listener.listen(128)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._inode = os.lstat(self.path).st_ino
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name="vulkan-layer-socket", daemon=True)
        self._thread.start()
        logger.info("answering the Vulkan layer on %s", self.path)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop accepting and remove the socket (if it is still ours). Connections being answered finish on
        their own threads, each within its layer's deadline. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(OSError):
            if self._inode is not None and os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        self._wake_r.close()
        self._wake_w.close()

    def _count(self, key: str) -> None:
        with self._counts_lock:
            self.counts[key] += 1

    def _serve(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        return
                    self._accept_all()

    def _accept_all(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("the Vulkan layer socket could not accept: %s", exc)
                time.sleep(0.05)  # EMFILE and the like: do not spin
                return
            if not self._slots.acquire(blocking=False):
                self._count("busy")
                conn.close()  # the layer goes on at once
                continue
            threading.Thread(
                target=self._answer, args=(conn,), name="vulkan-layer-report", daemon=True
            ).start()

    def _answer(self, conn: socket.socket) -> None:
        started = time.monotonic()
        try:
            with conn:
                peer = peer_credentials(conn)
                if not may_report(peer, self._own_uid):
                    self._count("refused_peer")
                    logger.warning(
                        "refused a Vulkan layer report from uid %d (pid %d): not this user",
                        peer.uid,
                        peer.pid,
                    )
                    return
                line = _read_line(conn, started + READ_TIMEOUT_S)
                try:
                    report = parse_report(line)
                except ValueError as exc:
                    self._count("bad_report")
                    logger.debug("ignored a malformed Vulkan layer report from pid %d: %s", peer.pid, exc)
                    return
                try:
                    self._handler(report, peer)
                except Exception:
                    logger.exception("handling a Vulkan layer report from pid %d failed", peer.pid)
                conn.settimeout(SEND_TIMEOUT_S)
                conn.sendall(answer_line((time.monotonic() - started) * 1000))
                self._count("answered")
        except OSError as exc:  # the layer gave up (its deadline) or went away: nothing to do
            logger.debug("a Vulkan layer connection ended early: %s", exc)
        finally:
            self._slots.release()


def _read_line(conn: socket.socket, deadline: float) -> bytes:
    """One line (without its newline) read before the deadline; whatever arrived when the peer closed."""
    data = bytearray()
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the report did not arrive in time")
        conn.settimeout(left)
        chunk = conn.recv(8192)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_LINE_BYTES:
            raise OSError(f"report longer than {MAX_LINE_BYTES} bytes")
    return bytes(data.split(b"\n", 1)[0])
