"""What can go wrong in IPAM, in IPAM's own terms. The plugin's edge
(``plugin.as_cni_error``) maps each to a CNI code; other users (the command
line, a Docker driver) show them as they are."""
from __future__ import annotations


class IpamError(Exception):
    """Base: ``hint`` says what the operator can do about it."""

    def __init__(self, msg: str, hint: str = "") -> None:
        super().__init__(msg)
        self.msg, self.hint = msg, hint


class PoolExhausted(IpamError):
    """Every address of the pool is allocated."""


class StateCorrupt(IpamError):
    """The state file cannot be read as a state."""


class StateIoError(IpamError):
    """The state (or a file the config names) cannot be read or written."""


class SourceUnavailable(IpamError):
    """The interface document cannot be fetched or parsed."""


class BadIpamConfig(IpamError):
    """The ipam section of the configuration is not valid."""
