"""Kubernetes Events on the SecureModel for the security events the webhook sees (refused attempts).

The admission path only enqueues (a bounded queue; when full, the Event is dropped and counted); a
background task creates the core/v1 Events. The webhook's ServiceAccount may `create events` and
nothing more about them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter

from samd.events import SecurityEvent
from samd.webhook.state import WatchedState

log = logging.getLogger(__name__)

QUEUE_SIZE = 128
COMPONENT = "samd-webhook"
NOT_RECORDED = Counter(
    "samd_webhook_kubernetes_events_dropped_total",
    "Kubernetes Events for security events that were not recorded: queue_full or failed",
    ["reason"],
)
for _reason in ("queue_full", "failed"):
    NOT_RECORDED.labels(_reason)

Create = Callable[[dict[str, Any]], Awaitable[object]]


def kubernetes_event(event: SecurityEvent, model_uid: str, now: datetime.datetime) -> dict[str, Any]:
    """The core/v1 Event on the SecureModel for `event` (pure)."""
    stamp = now.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{event.name}.{uuid.uuid4().hex[:16]}", "namespace": event.namespace},
        "involvedObject": {
            "apiVersion": "samd.dev/v1alpha1",
            "kind": "SecureModel",
            "namespace": event.namespace,
            "name": event.name,
            "uid": model_uid,
        },
        "type": "Warning",
        "reason": event.reason,
        "message": (f"{event.user}: " if event.user else "") + event.message[:1000],
        "source": {"component": COMPONENT},
        "reportingComponent": f"samd.dev/{COMPONENT}",
        "reportingInstance": os.environ.get("HOSTNAME", COMPONENT)[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventRecorder:
    """Records security events about a known SecureModel as Kubernetes Events, in the background."""

    def __init__(self, state: WatchedState, create: Create) -> None:
        self.state = state
        self.create = create
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.task: asyncio.Task[None] | None = None

    def __call__(self, event: SecurityEvent) -> None:
        """The `samd.events` listener: enqueue, never block."""
        model = self.state.model(event.namespace, event.name) if event.name else None
        if model is None:
            return  # no SecureModel to attach it to (a pod using a Secret of no known model)
        try:
            self.queue.put_nowait(kubernetes_event(event, model.uid, datetime.datetime.now(datetime.UTC)))
        except asyncio.QueueFull:
            NOT_RECORDED.labels("queue_full").inc()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="samd-webhook-events")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        while True:
            body = await self.queue.get()
            try:
                await self.create(body)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the recorder must outlive any one failure
                NOT_RECORDED.labels("failed").inc()
                log.warning(
                    "could not record a Kubernetes Event on %s: %s", body["involvedObject"]["name"], error
                )


def lightkube_create(client: Any) -> Create:
    """A `Create` that posts core/v1 Events through a lightkube AsyncClient."""
    from lightkube.resources.core_v1 import Event  # noqa: PLC0415

    async def create(body: dict[str, Any]) -> object:
        return await client.create(Event.from_dict(body), namespace=body["metadata"]["namespace"])

    return create
