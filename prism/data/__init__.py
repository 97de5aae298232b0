"""Data stage: sources, split rule, tokenizers, token shards and the loader (numpy only, no torch).

See ``docs/data.md``. The evaluator uses ``TrainLoader``, ``heldout_windows``,
``verify_data_dir`` and ``data_fingerprint``; ``prism data ...`` drives ``prepare_dataset``.
"""

from prism.data.errors import DataError
from prism.data.loader import Batch, TrainLoader, heldout_windows
from prism.data.manifest import DataManifest, data_fingerprint, read_data_manifest
from prism.data.prepare import ensure_offline_corpus, prepare_dataset
from prism.data.shards import verify_data_dir
from prism.data.sources import (
    Document,
    HubSource,
    LocalFileSource,
    OfflineDocstringSource,
    SourceInfo,
    limit_documents,
)
from prism.data.split import SPLIT_RULE, split_of
from prism.data.tokenizers import Tokenizer, get_tokenizer

__all__ = [
    "SPLIT_RULE",
    "Batch",
    "DataError",
    "DataManifest",
    "Document",
    "HubSource",
    "LocalFileSource",
    "OfflineDocstringSource",
    "SourceInfo",
    "Tokenizer",
    "TrainLoader",
    "data_fingerprint",
    "ensure_offline_corpus",
    "get_tokenizer",
    "heldout_windows",
    "limit_documents",
    "prepare_dataset",
    "read_data_manifest",
    "split_of",
    "verify_data_dir",
]
