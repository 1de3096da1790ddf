"""Dataset registry: real datasets loaded once into normalized tensors."""

from nas_proxy.data.base import Dataset
from nas_proxy.data.registry import list_datasets, load_dataset

__all__ = ["Dataset", "list_datasets", "load_dataset"]
