"""Python client for the local API: `StewardClient`.

Finds the running instance through the endpoint file and the token file in the state dir, and turns
problem JSON back into the same VramError classes the engine raised.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from app.core import paths
from app.core.errors import InsufficientVram, VramError


class NotRunning(VramError):
    code = "not_running"

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"VRAM Steward is not running ({detail})",
            suggestions=["Start it with `vram-steward` (tray) or `vram-steward daemon` (headless)"],
        )


class ApiError(VramError):
    """An error answer from the API, with its problem JSON."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(
            str(problem.get("message", f"HTTP {status}")),
            details=dict(problem.get("details") or {}),
            suggestions=list(problem.get("suggestions") or []),
            retry_after_s=problem.get("retry_after"),
        )
        self.status = status
        self.problem = problem
        self.code = str(problem.get("error", "api_error"))
        self.retriable = bool(problem.get("retriable", status in (503, 507)))


class StewardClient:
    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 15.0,
        state_dir: Path | None = None,
    ) -> None:
        endpoint_file = (state_dir / "api-endpoint.json") if state_dir else paths.api_endpoint_file()
        token_file = (state_dir / "api-token") if state_dir else paths.api_token_file()
        if base_url is None:
            try:
                data = json.loads(endpoint_file.read_text())
                base_url = f"http://{data['host']}:{data['port']}"
            except (OSError, ValueError, KeyError) as exc:
                raise NotRunning(f"no endpoint file at {endpoint_file}") from exc
        if token is None:
            try:
                token = token_file.read_text().strip()
            except OSError as exc:
                raise NotRunning(f"no token file at {token_file}") from exc
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                problem = json.loads(raw)
            except ValueError:
                problem = {"error": "http_error", "message": raw.decode(errors="replace")[:200]}
            if problem.get("error") == "insufficient_vram":
                raise InsufficientVram(
                    gpu=int((problem.get("details") or {}).get("gpu", -1)),
                    needed_bytes=int(problem.get("need_bytes") or 0),
                    available_bytes=int(problem.get("available_bytes") or 0),
                    retry_after_s=problem.get("retry_after"),
                ) from None
            raise ApiError(exc.code, problem) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise NotRunning(f"cannot reach {self.base_url}: {exc}") from exc
        return dict(json.loads(payload)) if payload else {}

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/v1/status")

    def models(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/models")["models"])

    def load(self, model: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/models/{model}/load", {})

    def unload(self, model: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/models/{model}/unload", {})

    def pause(self) -> dict[str, Any]:
        return self.request("POST", "/v1/pause", {})

    def resume(self) -> dict[str, Any]:
        return self.request("POST", "/v1/resume", {})

    def evict(self) -> dict[str, Any]:
        return self.request("POST", "/v1/evict", {})
