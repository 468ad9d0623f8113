"""One pod spec per way of naming a Secret (each path of `SECRET_NAME_PATHS`), valid for the API server.

The unit tests check that the decider's walker reports each one; the integration tests check that
the webhook configuration's matchConditions send each one to the webhook. Every example names the
Secret `SECRET` and has the container `app` mount the volume `v` (if there is one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from samd.webhook.workloads import CONTAINER_LISTS

SECRET = "some-model-keys"
MONITORS = ["192.0.2.1:6789"]

VOLUME_SOURCES: dict[str, dict[str, Any]] = {
    "volumes[].secret.secretName": {"secret": {"secretName": SECRET}},
    "volumes[].projected.sources[].secret.name": {
        "projected": {"sources": [{"configMap": {"name": "settings"}}, {"secret": {"name": SECRET}}]}
    },
    "volumes[].azureFile.secretName": {"azureFile": {"secretName": SECRET, "shareName": "share"}},
    "volumes[].cephfs.secretRef.name": {"cephfs": {"monitors": MONITORS, "secretRef": {"name": SECRET}}},
    "volumes[].cinder.secretRef.name": {"cinder": {"volumeID": "vol-1", "secretRef": {"name": SECRET}}},
    "volumes[].csi.nodePublishSecretRef.name": {
        "csi": {"driver": "csi.example.com", "nodePublishSecretRef": {"name": SECRET}}
    },
    "volumes[].flexVolume.secretRef.name": {
        "flexVolume": {"driver": "example.com/flex", "secretRef": {"name": SECRET}}
    },
    "volumes[].iscsi.secretRef.name": {
        "iscsi": {
            "targetPortal": "192.0.2.2:3260",
            "iqn": "iqn.2001-04.com.example:storage",
            "lun": 0,
            "chapAuthSession": True,
            "secretRef": {"name": SECRET},
        }
    },
    "volumes[].rbd.secretRef.name": {
        "rbd": {"monitors": MONITORS, "image": "img", "secretRef": {"name": SECRET}}
    },
    "volumes[].scaleIO.secretRef.name": {
        "scaleIO": {
            "gateway": "https://192.0.2.3",
            "system": "s",
            "volumeName": "v",
            "secretRef": {"name": SECRET},
        }
    },
    "volumes[].storageos.secretRef.name": {"storageos": {"volumeName": "v", "secretRef": {"name": SECRET}}},
}

CONTAINER_FIELDS: dict[str, tuple[dict[str, Any], str]] = {
    "env[].valueFrom.secretKeyRef.name": (
        {"env": [{"name": "KEYSET", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "k"}}}]},
        "env KEYSET",
    ),
    "envFrom[].secretRef.name": ({"envFrom": [{"secretRef": {"name": SECRET}}]}, "envFrom"),
}


@dataclass(frozen=True)
class Example:
    path: str
    spec: dict[str, Any]
    """A pod spec that names `SECRET` at `path` and nowhere else."""
    container: str | None
    """The container that sees the Secret (None: the kubelet uses it for the pod)."""
    how: str
    list_name: str = "containers"
    """For a container path: the list the container is in."""


def app(**extra: Any) -> dict[str, Any]:
    return {"name": "app", "image": "registry.example/app:1", **extra}


def examples() -> list[Example]:
    found = [
        Example(
            "imagePullSecrets[].name",
            {"containers": [app()], "imagePullSecrets": [{"name": SECRET}]},
            None,
            "imagePullSecrets",
        )
    ]
    for path, source in VOLUME_SOURCES.items():
        spec = {
            "containers": [app(volumeMounts=[{"name": "v", "mountPath": "/v"}])],
            "volumes": [{"name": "v", **source}],
        }
        found.append(Example(path, spec, "app", "volume v"))
    for list_name in CONTAINER_LISTS:
        for path, (fields, how) in CONTAINER_FIELDS.items():
            name = {"initContainers": "init", "containers": "app", "ephemeralContainers": "debug"}[list_name]
            spec = {"containers": [app()]} if list_name != "containers" else {}
            spec[list_name] = [{"name": name, "image": "registry.example/app:1", **fields}]
            found.append(Example(f"{list_name}[].{path}", spec, name, how, list_name))
    return found
