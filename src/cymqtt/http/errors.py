"""What can go wrong starting the HTTP listener, in a module of its own that imports neither
aiohttp nor the rest of the package: the `cymqtt` command catches it without loading them."""
from __future__ import annotations

import errno

__all__ = ["BindError"]


class BindError(OSError):
    """The HTTP listener could not bind its address; `str()` is the one line to show."""

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        super().__init__(exc.errno, exc.strerror)
        self.host = host
        self.port = port

    def __str__(self) -> str:
        where = f"{self.host}:{self.port}"
        if self.errno == errno.EADDRINUSE:
            return (f"HTTP port {self.port} on {self.host} is already in use; stop the other "
                    f"server or choose another ([http] port, or --http PORT)")
        if self.errno in (errno.EACCES, errno.EPERM):
            return (f"not allowed to serve HTTP on {where} ({self.strerror}); use a port "
                    f"above 1023 or run with privileges")
        return f"cannot serve HTTP on {where} ({self.strerror}); check [http] host and port"
