"""Names of the objects a SecureModel owns, and the limits Kubernetes puts on them.

Every name is derived from the model's name so the operator can find what it owns after a restart.
A SecureModel name may be up to 253 characters, longer than some of the names and label values
built from it may be; such names are cut and end in a hash of the whole name, so two long model
names that share a prefix still get different objects.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from samd.spec import Grant

DNS_LABEL_MAX = 63
"""Services, label values and anything that must be a DNS label."""
DNS_SUBDOMAIN_MAX = 253
"""Most object names (Roles, Secrets, ConfigMaps, NetworkPolicies, ...)."""

DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

ModelRole = Literal["deployer", "reviewer"]


def short_hash(text: str, length: int = 8) -> str:
    """The first `length` hex digits of the SHA-256 of `text`."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _hashed(name: str, limit: int, source: str) -> str:
    suffix = "-" + short_hash(source)
    # A name must end with an alphanumeric character; the cut may fall just after a '-' or '.'.
    return name[: limit - len(suffix)].rstrip("-.") + suffix


def fit_name(name: str, limit: int) -> str:
    """`name` if it fits in `limit` characters, else a cut prefix, '-' and 8 hex digits of its hash."""
    return name if len(name) <= limit else _hashed(name, limit, name)


def model_label_value(model: str) -> str:
    """The value of the `samd.dev/model` and `app.kubernetes.io/instance` labels (at most 63 characters)."""
    return fit_name(model, DNS_LABEL_MAX)


WORKLOAD_ACCOUNT_SUFFIX = "-model"


def workload_service_account_name(model: str) -> str:
    """Always ends in WORKLOAD_ACCOUNT_SUFFIX, so the webhook's match conditions can find pods that run as one."""
    return fit_name(model, DNS_SUBDOMAIN_MAX - len(WORKLOAD_ACCOUNT_SUFFIX)) + WORKLOAD_ACCOUNT_SUFFIX


def serving_name(model: str) -> str:
    """The name of the Deployment, the Service and the PodDisruptionBudget (kept equal).

    A Service name must be a DNS-1035 label (63 characters at most, no '.', a letter first) while a
    model name is a DNS subdomain; a model name that is not a valid Service name is turned into one
    that ends in a hash of the model name, so that "a.b" and "a-b" still get different Services.
    """
    if len(model) <= DNS_LABEL_MAX and DNS_1035_LABEL.match(model):
        return model
    label = model.replace(".", "-")
    if not label[:1].isalpha():
        label = "samd-" + label
    return _hashed(label, DNS_LABEL_MAX, model)


def role_name(model: str, role: ModelRole) -> str:
    """The Role, and the RoleBinding of the same name, for one kind of access to the model."""
    return fit_name(f"samd-{model}-{role}", DNS_SUBDOMAIN_MAX)


def grant_binding_name(model: str, grant: Grant) -> str:
    """The RoleBinding of one time-bound grant: stable for the same role and subject.

    The parts are joined with '/' (which no role, kind or namespace contains) so that two different
    subjects never hash the same text.
    """
    subject = grant.subject
    identity = "/".join((grant.role, subject.kind, subject.namespace or "", subject.name))
    return fit_name(f"samd-{model}-grant-{short_hash(identity)}", DNS_SUBDOMAIN_MAX)


def network_policy_name(model: str) -> str:
    return fit_name(f"samd-{model}-isolation", DNS_SUBDOMAIN_MAX)


def tls_secret_name(model: str) -> str:
    """The Secret holding the model server's certificate, key and the CA certificate."""
    return fit_name(f"{model}-tls", DNS_SUBDOMAIN_MAX)


def client_secret_name(model: str, client: str) -> str:
    """The Secret holding the certificate of one allowed client identity."""
    return fit_name(f"{model}-client-{client}", DNS_SUBDOMAIN_MAX)


def signature_config_map_name(model: str) -> str:
    """The ConfigMap holding the signature bundle the operator fetched, for the admission webhook."""
    return fit_name(f"{model}-signature", DNS_SUBDOMAIN_MAX)


def trust_config_map_name(model: str) -> str:
    """The ConfigMap with the trusted signers the init container verifies the model against."""
    return fit_name(f"{model}-trust", DNS_SUBDOMAIN_MAX)
