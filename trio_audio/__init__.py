"""trio-audio: an audio-ingestion service on Trio structured concurrency.

The public surface is re-exported here; the modules below hold the code.
"""

from .config import Config
from .errors import ServiceError, StoreError
from .service import Running, serve

__all__ = ["Config", "Running", "ServiceError", "StoreError", "serve"]
__version__ = "0.1.0"
