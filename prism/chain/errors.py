"""Typed errors of the chain stage.

Chain failures are ours (infrastructure): the validator retries them on its next step and never
penalizes a miner for them. Mistakes the operator can fix (an unregistered hotkey, a missing
wallet, an unfunded coldkey, a subnet that does not exist) are ``OperatorError``s so the command
stops with a message.

When the failure came from a real chain, ``chain_name`` holds the chain's own error name (for
example ``SettingWeightsTooFast`` or ``SpaceLimitExceeded``); it is ``None`` for failures the
chain did not name (a timeout, a closed connection) and on the embedded chain.
"""

from __future__ import annotations

from prism.errors import InfrastructureFault, OperatorError


class NamedByChain:
    """Mixin: the chain's own name for the error, when it gave one."""

    chain_name: str | None = None


class ChainError(InfrastructureFault, NamedByChain):
    """A chain call failed on our side of the line; retried later."""

    default_code = "chain.error"


class ChainUnavailable(ChainError):
    """The chain could not be reached (connection refused, closed, refused by the RPC endpoint)."""

    default_code = "chain.unavailable"


class ChainTimeout(ChainUnavailable):
    """A chain call did not answer within its time budget (a write may still land later)."""

    default_code = "chain.timeout"


class ChainRejected(ChainError):
    """The chain refused an extrinsic for a reason that is neither a rate limit nor registration."""

    default_code = "chain.rejected"


class RateLimited(ChainError):
    """The call came too soon after the previous one of its kind; retry after ``retry_after_blocks``."""

    default_code = "chain.rate_limited"

    def __init__(self, message: str, *, retry_after_blocks: int | None = None, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_blocks = retry_after_blocks


class BlockUnavailable(ChainError):
    """The block does not exist yet (or is not known to this node), so it has no hash."""

    default_code = "chain.block_unavailable"


class NotRegistered(OperatorError, NamedByChain):
    """The hotkey has no uid on this subnet: register it before serving or validating."""

    default_code = "chain.not_registered"


class NotPermitted(OperatorError, NamedByChain):
    """The hotkey is registered but lacks what the call needs (a validator permit, enough stake)."""

    default_code = "chain.not_permitted"


class InsufficientBalance(OperatorError, NamedByChain):
    """The coldkey that pays the fee cannot: fund it (weights, serving and commitments are paid by the
    coldkey that owns the signing hotkey)."""

    default_code = "chain.insufficient_balance"


class SubnetMissing(OperatorError, NamedByChain):
    """The subnet (or the local chain file) does not exist."""

    default_code = "chain.subnet_missing"


class WalletError(OperatorError):
    """A wallet or one of its keys is missing or unreadable."""

    default_code = "wallet.missing"
