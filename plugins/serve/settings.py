"""What ``geo-os pixel-llm serve`` is told: the checkpoint, where to listen, how to batch, and the
limits that keep one request (or a flood of them) from taking the server down. Pydantic only."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field

from geometry_os.systems.pixel_llm.plugin_api import StrictModel

TOKEN_ENV = "GEO_OS_SERVE_TOKEN"
SETTINGS_ENV = "GEO_OS_SERVE_SETTINGS"  # JSON ServeSettings for the worker processes of --workers N


class ServeSettings(StrictModel):
    """Every ``serve`` flag; the limits' defaults are safe for a service open to untrusted clients."""

    checkpoint: str = Field(description="checkpoint folder")
    host: str = Field("127.0.0.1", min_length=1, description="interface to bind (loopback by default)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port)")
    device: str = Field("cpu", description="cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights and activations: auto is bfloat16 where the hardware computes it natively"
    )
    workers: int = Field(1, ge=1, le=64, description="server processes, each with its own model and batcher")
    max_batch_size: int = Field(16, ge=1, le=1024, description="images decoded together at most")
    max_wait_ms: float = Field(10.0, ge=0, le=10_000, description="how long the first queued request waits for others")
    max_upload_bytes: int = Field(20_000_000, ge=1, description="request body size limit (bytes)")
    max_image_pixels: int = Field(24_000_000, ge=1, description="width x height limit, checked before decoding")
    max_images: int = Field(16, ge=1, description="images per request")
    max_queue: int = Field(512, ge=1, description="images waiting for the model; more gets 429")
    request_timeout: float = Field(30.0, gt=0, description="seconds a caption request may take; then 504")
    max_num_beams: int = Field(8, ge=1, description="largest num_beams a request may ask for")
    token: str | None = Field(None, min_length=1, description="bearer token required on /v1/* and /metrics")
    allow_train: bool = Field(False, description="offer the pixel_llm.train system call over HTTP")

    @property
    def loopback(self) -> bool:
        """Whether ``host`` is a loopback address (``localhost``, 127.0.0.0/8, ``::1``)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
