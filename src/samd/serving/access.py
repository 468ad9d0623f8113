"""Who may call the model (the client certificate's identity) and how often (token buckets)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from samd.serving.protocol import RefusedError


@dataclass(frozen=True)
class ClientIdentity:
    name: str  # the certificate's common name: the client's name in spec.serving.clients
    organization: str


def _subject_fields(peercert: Mapping[str, Any]) -> dict[str, list[str]]:
    """The subject attributes of `ssl.SSLSocket.getpeercert()`'s dictionary, by short name."""
    fields: dict[str, list[str]] = {}
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            fields.setdefault(key, []).append(value)
    return fields


@dataclass(frozen=True)
class IdentityPolicy:
    """A client is the model's when its certificate's O is the model's and its CN an allowed client.

    The TLS layer has already checked that the model's CA issued the certificate; the operator's CA
    signs the clients of every model, so the organization tells this model's clients from others'.
    """

    organization: str
    allowed_clients: frozenset[str]

    def identify(self, peercert: Mapping[str, Any] | None) -> ClientIdentity:
        if not peercert:
            # The handshake requires a certificate; this is a defence in depth.
            raise RefusedError(403, "no_certificate", "a client certificate is required")
        fields = _subject_fields(peercert)
        organizations = fields.get("organizationName", [])
        names = fields.get("commonName", [])
        if len(names) != 1:
            raise RefusedError(
                403, "no_common_name", "the client certificate must have exactly one common name (CN)"
            )
        name = names[0]
        if organizations != [self.organization]:
            shown = ", ".join(organizations) or "none"
            raise RefusedError(
                403,
                "wrong_organization",
                f"client {name!r} is not a client of this model: its certificate's organization is {shown}, "
                f"this model's clients have {self.organization}",
            )
        if name not in self.allowed_clients:
            raise RefusedError(
                403,
                "client_not_allowed",
                f"client {name!r} is not allowed to call this model; its allowed clients are "
                f"{', '.join(sorted(self.allowed_clients)) or 'none'} (spec.serving.clients)",
            )
        return ClientIdentity(name=name, organization=self.organization)


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one token per request."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> float:
        """Take a token; 0.0 if there was one, else the seconds until there will be one."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class RateLimiter:
    """One token bucket per client (the clients are the allowed ones, so the buckets are bounded)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("the rate must be positive and the burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, client: str) -> None:
        """Raise a 429 `RefusedError` (with Retry-After) if `client` is over its rate."""
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(self.rate, self.burst, self._clock)
        wait = bucket.take()
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise RefusedError(
                429,
                "rate_limited",
                f"client {client!r} is over its rate limit of {self.rate:g} requests/s (burst {self.burst}); "
                f"retry in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )


def allowed_clients(names: Collection[str]) -> frozenset[str]:
    return frozenset(name for name in names if name)
