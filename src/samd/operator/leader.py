"""Leader election: one replica of the operator reconciles, the others stand by (docs/operator.md).

kopf's own peering pauses every operator when two share a priority, so it elects nobody among
identical replicas; a ``coordination.k8s.io`` Lease, as client-go's leader election uses, does.

The rules are client-go's:

- a standby takes the Lease only when its holder has not renewed it for ``lease_duration``, measured
  on the standby's own clock from the moment it saw the last change (no clock comparison between
  machines);
- the leader renews every ``retry_period``; when it cannot renew for ``renew_deadline``
  (shorter than ``lease_duration``), it stops at once, before any standby may take over;
- a leader that stops cleanly (SIGTERM) releases the Lease so that a standby takes over at its next
  attempt instead of waiting out the duration.

The Lease is written with the resourceVersion that was read, so two standbys racing for it cannot
both win: the API server refuses the second write with 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from samd.operator.config import Variable
from samd.operator.shard import parse_selector
from samd.spec import parse_duration

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ElectionConfig:
    """How the replicas elect their leader; read from SAMD_LEADER_* variables at start-up."""

    enabled: bool = True  # SAMD_LEADER_ELECTION
    lease_name: str = "samd-operator"  # SAMD_LEADER_LEASE, in the operator's namespace (SAMD_NAMESPACE)
    namespace: str = "samd-system"
    identity: str = ""  # SAMD_LEADER_IDENTITY; default: the host name, which is the pod's name
    lease_duration: float = 15.0  # SAMD_LEADER_LEASE_DURATION
    renew_deadline: float = 10.0  # SAMD_LEADER_RENEW_DEADLINE
    retry_period: float = 2.0  # SAMD_LEADER_RETRY_PERIOD

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs SAMD_LEADER_RETRY_PERIOD < SAMD_LEADER_RENEW_DEADLINE < "
                f"SAMD_LEADER_LEASE_DURATION (got {self.retry_period} s, {self.renew_deadline} s, "
                f"{self.lease_duration} s): the leader must give up before a standby may take over"
            )

    @property
    def takeover_bound(self) -> float:
        """The longest a killed leader's Lease stays held, API latency aside.

        A standby sees the last renewal up to one retry period late (it polls), waits the duration
        from then, and notices the expiry at its next poll, up to one more retry period later.
        """
        return self.lease_duration + 2 * self.retry_period

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ElectionConfig:
        env = os.environ if env is None else env
        defaults = cls()

        def seconds(name: str, default: float) -> float:
            """A number of seconds ("0.5") or a duration ("15s", "1m")."""
            value = env.get(name, "").strip()
            if not value:
                return default
            try:
                return float(value)
            except ValueError:
                pass
            try:
                return parse_duration(value).total_seconds()
            except ValueError:
                raise ValueError(f"{name}={value!r}: write seconds (0.5) or a duration (15s)") from None

        enabled = env.get("SAMD_LEADER_ELECTION", "true").strip().lower()
        if enabled not in ("true", "false"):
            raise ValueError(f"SAMD_LEADER_ELECTION={enabled!r}: write true or false")
        lease_name = env.get("SAMD_LEADER_LEASE", "").strip()
        if not lease_name:
            # Each shard elects its own leader: instances with different selectors in one namespace
            # get different Leases without naming them (docs/scaling.md).
            selector = parse_selector(env.get("SAMD_NAMESPACE_SELECTOR", ""))
            lease_name = defaults.lease_name
            if not selector.everything:
                lease_name = f"{defaults.lease_name}-{selector.shard_id()}"
        return cls(
            enabled=enabled == "true",
            lease_name=lease_name,
            namespace=env.get("SAMD_NAMESPACE", defaults.namespace),
            # The pod's name: a container restarted in the same pod (the old process is gone) takes
            # its Lease back at once instead of waiting it out.
            identity=env.get("SAMD_LEADER_IDENTITY") or socket.gethostname(),
            lease_duration=seconds("SAMD_LEADER_LEASE_DURATION", defaults.lease_duration),
            renew_deadline=seconds("SAMD_LEADER_RENEW_DEADLINE", defaults.renew_deadline),
            retry_period=seconds("SAMD_LEADER_RETRY_PERIOD", defaults.retry_period),
        )


def variables() -> tuple[Variable, ...]:
    """Every variable `ElectionConfig.from_env` reads (docs/configuration.md)."""
    d = ElectionConfig()
    return (
        Variable(
            "SAMD_LEADER_ELECTION",
            "true",
            "elect one leader among the operator's replicas through a Lease; `false` runs kopf at once "
            "(one replica only)",
        ),
        Variable(
            "SAMD_LEADER_LEASE",
            d.lease_name,
            "the Lease's name, in `SAMD_NAMESPACE`; with `SAMD_NAMESPACE_SELECTOR` set, the default is "
            "`samd-operator-shard-<hash of the selector>`, one Lease per shard",
        ),
        Variable(
            "SAMD_LEADER_IDENTITY",
            "host name",
            "the name this replica holds the Lease under; the default, the pod's name, lets a restarted "
            "container take its own Lease back at once. Unique per replica",
        ),
        Variable(
            "SAMD_LEADER_LEASE_DURATION",
            f"{d.lease_duration:g}",
            "seconds a standby waits, after the last renewal it saw, before it takes the Lease",
        ),
        Variable(
            "SAMD_LEADER_RENEW_DEADLINE",
            f"{d.renew_deadline:g}",
            "seconds the leader keeps trying to renew before it stops itself (less than the duration)",
        ),
        Variable(
            "SAMD_LEADER_RETRY_PERIOD",
            f"{d.retry_period:g}",
            "seconds between the leader's renewals and between a standby's attempts",
        ),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Observed:
    """What a standby last saw of the Lease, and when by its own monotonic clock."""

    record: tuple[str | None, object, str | None]  # holder, renewTime, resourceVersion
    at: float


class LeaderElector:
    """Acquire, renew and release the operator's Lease."""

    def __init__(self, client: AsyncClient, config: ElectionConfig) -> None:
        self.client = client
        self.config = config
        self.observed: Observed | None = None

    async def _read(self) -> Lease | None:
        try:
            return await self.client.get(Lease, self.config.lease_name, namespace=self.config.namespace)
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise

    def _spec(self, *, transitions: int, acquired: datetime.datetime) -> LeaseSpec:
        return LeaseSpec(
            holderIdentity=self.config.identity,
            leaseDurationSeconds=max(1, round(self.config.lease_duration)),
            acquireTime=acquired,
            renewTime=_now(),
            leaseTransitions=transitions,
        )

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this replica holds the Lease afterwards."""
        lease = await self._read()
        if lease is None:
            fresh = Lease(
                metadata=ObjectMeta(name=self.config.lease_name, namespace=self.config.namespace),
                spec=self._spec(transitions=0, acquired=_now()),
            )
            try:
                await self.client.create(fresh)
            except ApiError as error:
                if error.status.code == 409:  # another replica created it first
                    return False
                raise
            return True
        spec = lease.spec or LeaseSpec()
        holder = spec.holderIdentity or None
        ours = holder == self.config.identity
        if not ours and holder is not None:
            record = (holder, spec.renewTime, lease.metadata.resourceVersion if lease.metadata else None)
            now = time.monotonic()
            if self.observed is None or self.observed.record != record:
                self.observed = Observed(record, now)
            duration = float(spec.leaseDurationSeconds or self.config.lease_duration)
            if now - self.observed.at < duration:
                return False  # the holder is alive as far as this replica can tell
        transitions = (spec.leaseTransitions or 0) + (0 if ours else 1)
        acquired = spec.acquireTime if ours and spec.acquireTime else _now()
        lease.spec = self._spec(transitions=transitions, acquired=acquired)
        try:
            await self.client.replace(lease)  # carries the resourceVersion read: a race gets 409
        except ApiError as error:
            if error.status.code == 409:
                return False
            raise
        if not ours:
            log.info(
                "leader election: this replica now leads",
                extra={"identity": self.config.identity, "previous": holder, "lease": self.config.lease_name},
            )
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica leads (True) or is asked to stop (False)."""
        log.info(
            "leader election: standing by",
            extra={"identity": self.config.identity, "lease": self.config.lease_name},
        )
        while not stop.is_set():
            try:
                if await self.try_acquire_or_renew():
                    return True
            except (ApiError, OSError) as error:
                log.warning("leader election: cannot read or write the Lease", extra={"error": str(error)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.config.retry_period)
        return False

    async def keep(self) -> None:
        """Renew every retry period; return when renewal failed for the renew deadline (leadership lost)."""
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.config.retry_period)
            try:
                if await self.try_acquire_or_renew():
                    last_renewed = time.monotonic()
                    continue
                log.error(
                    "leader election: another replica holds the Lease",
                    extra={"lease": self.config.lease_name},
                )
                return
            except (ApiError, OSError) as error:
                log.warning("leader election: cannot renew the Lease", extra={"error": str(error)})
            if time.monotonic() - last_renewed >= self.config.renew_deadline:
                log.error(
                    "leader election: could not renew the Lease within the renew deadline",
                    extra={"renew_deadline": self.config.renew_deadline},
                )
                return

    async def release(self) -> None:
        """Give the Lease up so a standby takes over at its next attempt (a clean shutdown)."""
        try:
            lease = await self._read()
            if lease is None or lease.spec is None or lease.spec.holderIdentity != self.config.identity:
                return
            lease.spec.holderIdentity = None
            lease.spec.leaseDurationSeconds = 1
            lease.spec.renewTime = _now()
            await self.client.replace(lease)
            log.info("leader election: released the Lease", extra={"lease": self.config.lease_name})
        except (ApiError, OSError) as error:
            # Not fatal: the standby takes over when the Lease expires instead.
            log.warning("leader election: could not release the Lease", extra={"error": str(error)})
