"""nas-proxy: neural architecture search on distilled dataset proxies."""

__version__ = "0.1.0"

from nas_proxy.errors import UserError

__all__ = ["UserError", "__version__"]
