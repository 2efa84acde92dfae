"""cymqtt: an MQTT 3.1 / 3.1.1 / 5.0 broker for Python with a compiled Cython core."""
from cymqtt._version import __version__

__all__ = ["__version__"]
