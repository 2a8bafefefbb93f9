"""The settings of `swcm serve` (its flags are made from them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServeSettings:
    """How `swcm serve` batches, limits and guards requests."""

    host: str = "127.0.0.1"
    port: int = 5000  # LibreTranslate's port, which its clients default to
    batch_size: int = 32  # texts decoded together at most
    max_wait_ms: float = 5.0  # how long a batch waits to fill once it has fewer than batch_size texts
    queue_size: int = 1024  # texts waiting at most; past it, 429
    char_limit: int = 2000  # characters per text at most; past it, 400
    batch_limit: int = 128  # texts per request at most; past it, 400
    alternatives_limit: int = 5  # alternatives per text at most
    api_key: str | None = None  # required in every request when set
    cors_origins: list[str] = field(default_factory=list)  # origins allowed to call the API from a browser ("*": any)

    def check(self) -> None:
        for name in ("batch_size", "queue_size", "char_limit", "batch_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.alternatives_limit < 0:
            raise ValueError("--max-wait-ms and --alternatives-limit must not be negative")
        if self.batch_limit > self.queue_size:
            raise ValueError(f"--batch-limit ({self.batch_limit}) must not exceed --queue-size ({self.queue_size}): "
                             "such a request could never be queued")
