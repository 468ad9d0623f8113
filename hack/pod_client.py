"""A V2 client in a pod of SAMD's image: one prediction over mTLS through a model's Service.

`make demo` (on a real node) and the real test tier run it. The local control plane has no cluster
DNS, so the client connects to the Service's ClusterIP (kube-proxy routes it to a model pod) and
checks the server certificate against the Service's DNS name `<model>.<namespace>.svc`, one of the
names the operator puts in that certificate: the same check a client makes that resolves the name.

Its client certificate is the Secret the operator issues per client (`<model>-client-<client>`, a
`kubernetes.io/tls` Secret), copied to the client's namespace as users do; it is mounted at /tls.
The pod prints one JSON line: `answered` (HTTP status, the `Samd-*` provenance headers, the body),
`refused` (the TCP connection was made, then TLS or the server ended it) or `unreachable` (no TCP
connection within `patience` seconds: a NetworkPolicy drops it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

TLS_DIR = "/tls"

# Runs with the image's Python and its standard library only. kube-router adds a new pod's address
# to the policy's sets a moment after the pod starts: the TCP connection is retried until `patience`.
SCRIPT = """
import http.client, json, socket, ssl, sys, time
call = json.loads(sys.argv[1])
started = time.monotonic()
while True:
    try:
        raw = socket.create_connection((call["address"], call["port"]), timeout=2)
        break
    except OSError as error:
        if time.monotonic() - started > call["patience"]:
            print(json.dumps({"outcome": "unreachable", "error": f"{type(error).__name__}: {error}"}))
            sys.exit(0)
        time.sleep(0.2)
context = ssl.create_default_context(cafile=call["tls_dir"] + "/ca.crt")
if call["certificate"]:
    context.load_cert_chain(call["tls_dir"] + "/tls.crt", call["tls_dir"] + "/tls.key")
body = json.dumps({"inputs": [{"name": "features", "datatype": "FP32",
                               "shape": [len(call["rows"]), len(call["rows"][0])], "data": call["rows"]}]})
try:
    connection = http.client.HTTPSConnection(call["server_name"], call["port"], context=context, timeout=10)
    connection.sock = context.wrap_socket(raw, server_hostname=call["server_name"])
    connection.request("POST", "/v2/models/" + call["model"] + "/infer", body=body,
                       headers={"Content-Type": "application/json"})
    answer = connection.getresponse()
    text = answer.read().decode()
except (ssl.SSLError, OSError) as error:
    print(json.dumps({"outcome": "refused", "error": f"{type(error).__name__}: {error}"}))
    sys.exit(0)
headers = {name.lower(): value for name, value in answer.getheaders() if name.lower().startswith("samd-")}
print(json.dumps({"outcome": "answered", "status": answer.status, "headers": headers, "body": json.loads(text),
                  "seconds": round(time.monotonic() - started, 2)}))
"""


@dataclass(frozen=True)
class Call:
    """One prediction: where (the Service's ClusterIP and port), which name the certificate must carry."""

    address: str
    port: int
    server_name: str
    model: str
    rows: list[list[float]]
    patience: float = 8.0


def client_pod(
    name: str,
    call: Call,
    *,
    image: str,
    labels: dict[str, str],
    tls_secret: str,
    certificate: bool = True,
) -> dict[str, Any]:
    """The client pod (restricted profile, no token); without `certificate` it mounts only ca.crt."""
    secret: dict[str, Any] = {"secretName": tls_secret}
    if not certificate:
        secret["items"] = [{"key": "ca.crt", "path": "ca.crt"}]
    argument = json.dumps({**call.__dict__, "tls_dir": TLS_DIR, "certificate": certificate})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "client",
                    "image": image,
                    "command": ["python", "-c", SCRIPT, argument],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                    },
                    "volumeMounts": [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}],
                }
            ],
            "volumes": [{"name": "tls", "secret": secret}],
        },
    }


def copied_secret(secret: dict[str, Any], namespace: str) -> dict[str, Any]:
    """A Secret as read from the API, ready to create in another namespace (type and data only)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret["metadata"]["name"], "namespace": namespace},
        "type": secret.get("type", "Opaque"),
        "data": dict(secret.get("data") or {}),
    }


def outcome(log: str) -> dict[str, Any]:
    """The client's result: the last JSON line of its log."""
    for line in reversed(log.strip().splitlines()):
        if line.startswith("{"):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    raise ValueError(f"the client pod printed no result; its log:\n{log}")
