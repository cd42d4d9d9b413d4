"""The VramError hierarchy: each error carries its facts, whether a retry can help, a message for people,
suggestions, and a problem-JSON form for API clients (see DESIGN.md, "Contracts").

Messages never contain pointers or raw bytes: only names, sizes and paths.
"""

from __future__ import annotations

from typing import Any

from app.core.units import format_bytes


class VramError(Exception):
    """Base of every error VRAM Steward reports to people or clients."""

    code = "vram_error"
    retriable = False
    http_status = 500

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        suggestions: list[str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.suggestions: list[str] = list(suggestions or [])
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.message

    def user_message(self) -> str:
        """One paragraph for a notification or the CLI: the message, then what to do."""
        if not self.suggestions:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {s}" for s in self.suggestions)

    def to_problem(self) -> dict[str, Any]:
        """The problem JSON that API clients receive."""
        problem: dict[str, Any] = {
            "error": self.code,
            "message": self.message,
            "details": dict(self.details),
            "suggestions": list(self.suggestions),
            "retriable": self.retriable,
            "retry_after": self.retry_after_s,
        }
        return problem


class InsufficientVram(VramError):
    """Admission refused: the request does not fit in free VRAM minus headroom and reservations."""

    code = "insufficient_vram"
    retriable = True
    http_status = 507

    def __init__(
        self,
        *,
        gpu: int,
        needed_bytes: int,
        available_bytes: int,
        holder: str = "",
        retry_after_s: float | None = 30.0,
        suggestions: list[str] | None = None,
    ) -> None:
        self.gpu = gpu
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes
        what = f"{holder} " if holder else ""
        message = (
            f"Not enough free VRAM on GPU {gpu} for {what}: need {format_bytes(needed_bytes)}, "
            f"{format_bytes(max(available_bytes, 0))} available after headroom and reservations."
        ).replace(" for :", ":")
        if suggestions is None:
            suggestions = [
                "Close applications that use the GPU, or wait and retry",
                "Load a smaller model or a more quantized variant",
                "Lower reserved_system_vram / headroom_percent if your desktop needs less",
            ]
        super().__init__(
            message=message,
            details={"gpu": gpu, "holder": holder},
            suggestions=suggestions,
            retry_after_s=retry_after_s,
        )

    def to_problem(self) -> dict[str, Any]:
        problem = super().to_problem()
        problem["need_bytes"] = self.needed_bytes
        problem["available_bytes"] = self.available_bytes
        return problem


class CudaAllocationFailed(VramError):
    """A CUDA allocation failed after admission (another application took the memory meanwhile)."""

    code = "cuda_allocation_failed"
    retriable = True
    http_status = 507

    def __init__(
        self, *, gpu: int, model: str, requested_bytes: int, cause: str, retry_after_s: float = 10.0
    ) -> None:
        self.gpu = gpu
        self.model = model
        self.requested_bytes = requested_bytes
        super().__init__(
            message=(
                f"Could not allocate {format_bytes(requested_bytes)} on GPU {gpu} for {model}: {cause}. "
                "Everything allocated for it was freed."
            ),
            details={"gpu": gpu, "model": model, "requested_bytes": requested_bytes, "cause": cause},
            suggestions=["Another application took the memory meanwhile; retry when the GPU is free"],
            retry_after_s=retry_after_s,
        )


class SealVerificationFailed(VramError):
    """What is in VRAM no longer matches the digest computed when the model was sealed."""

    code = "seal_verification_failed"
    retriable = False
    http_status = 409

    def __init__(self, *, model: str, gpu: int, damaged_chunks: list[int], chunk_size_bytes: int) -> None:
        self.model = model
        self.gpu = gpu
        self.damaged_chunks = damaged_chunks
        first = damaged_chunks[0] if damaged_chunks else -1
        super().__init__(
            message=(
                f"{model} on GPU {gpu} failed verification: {len(damaged_chunks)} damaged chunk(s), "
                f"first at chunk {first} (offset {format_bytes(first * chunk_size_bytes)})."
            ),
            details={
                "model": model,
                "gpu": gpu,
                "damaged_chunks": damaged_chunks,
                "chunk_size_bytes": chunk_size_bytes,
            },
            suggestions=[
                "Unload and reload the model",
                "Check the GPU for memory errors (nvidia-smi -q -d ECC)",
            ],
        )


class ModelFileError(VramError):
    """A model file that is missing, unreadable, empty or changed while it was read."""

    code = "model_file_error"
    retriable = False
    http_status = 422

    def __init__(
        self, *, path: str, problem: str, suggestion: str = "Check the model's path in the config"
    ) -> None:
        self.path = path
        super().__init__(
            message=f"Model file {path}: {problem}",
            details={"path": path, "problem": problem},
            suggestions=[suggestion],
        )


class GpuUnavailable(VramError):
    """The GPU cannot be used: no driver, lost, or a driver/library mismatch."""

    code = "gpu_unavailable"
    retriable = False
    http_status = 503

    def __init__(self, *, reason: str, gpu: int | None = None, suggestion: str | None = None) -> None:
        self.gpu = gpu
        where = f"GPU {gpu}" if gpu is not None else "The GPU"
        super().__init__(
            message=f"{where} is unavailable: {reason}",
            details={"gpu": gpu, "reason": reason},
            suggestions=[suggestion] if suggestion else [],
        )


class InvalidInput(VramError):
    """A request or argument that is malformed; retrying the same thing cannot help."""

    code = "invalid_input"
    retriable = False
    http_status = 400

    def __init__(self, message: str, *, field_name: str | None = None, value: object = None) -> None:
        details: dict[str, Any] = {}
        if field_name is not None:
            details["field"] = field_name
            details["value"] = repr(value)
        super().__init__(message=message, details=details)


class ConfigError(VramError):
    """A configuration problem, naming the file, the key, the value and what was expected."""

    code = "config_error"
    retriable = False
    http_status = 400

    def __init__(self, *, path: str, key: str, value: object, expected: str, line: int | None = None) -> None:
        self.path = path
        self.key = key
        self.value = value
        self.expected = expected
        self.line = line
        where = f"{path}:{line}" if line is not None else path
        shown = "(missing)" if value is _MISSING else _shown(value)
        super().__init__(
            message=f"{where}: {key} = {shown}: expected {expected}",
            details={"path": path, "key": key, "value": shown, "expected": expected, "line": line},
            suggestions=[f"Edit {path} and fix {key}, then run `vram-steward config check`"],
        )


SHOWN_CHARS = 80


def _shown(value: object) -> str:
    """The value as the message shows it, cut when huge (a pasted file must not fill the terminal)."""
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}… ({len(text)} characters)"


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


_MISSING: Any = _Missing()
MISSING: Any = _MISSING
