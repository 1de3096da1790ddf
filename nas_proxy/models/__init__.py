"""Architecture specs, the model-family registry (convnet, mlp, timm) and model costs.

Spec strings are ``FAMILY:key=value,...`` (see docs/architecture.md); ``parse_spec`` validates
them strictly and ``str()`` of the result is canonical. Importing this package registers the
built-in families.
"""

from nas_proxy.models import convnet, mlp, timm_adapter  # noqa: F401  (registers the families)
from nas_proxy.models.factory import build_model
from nas_proxy.models.profile import count_flops, count_params, model_profile
from nas_proxy.models.registry import list_families, register_family
from nas_proxy.models.spec import ArchSpec, Option, parse_spec

__all__ = [
    "ArchSpec",
    "Option",
    "build_model",
    "count_flops",
    "count_params",
    "list_families",
    "model_profile",
    "parse_spec",
    "register_family",
]
