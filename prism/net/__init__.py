"""Net stage: the PRISM axon (aiohttp server) and dendrite (signed client), protocol ``prism/1``.

Authentication uses ``bittensor.http_auth`` through ``prism.chain.auth`` (only ``prism.chain``
imports bittensor). See ``docs/protocol.md``.
"""

from __future__ import annotations

from prism.net.axon import Axon, AxonConfig, MetagraphCache
from prism.net.dendrite import Dendrite, DendriteConfig, FetchResult, FetchStatus
from prism.net.protocol import INFO_PATH, PROTOCOL_VERSION, SUBMISSION_PATH, InfoResponse

__all__ = [
    "INFO_PATH",
    "PROTOCOL_VERSION",
    "SUBMISSION_PATH",
    "Axon",
    "AxonConfig",
    "Dendrite",
    "DendriteConfig",
    "FetchResult",
    "FetchStatus",
    "InfoResponse",
    "MetagraphCache",
]
