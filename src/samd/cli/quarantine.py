"""`samd quarantine set | clear | show`: a person's side of the quarantine (docs/events.md).

The quarantine lives in the SecureModel's status (`status.quarantine`), written through the status
subresource: the API server lets only those allowed to write `securemodels/status` set or clear it
(the operator, and people bound to the chart's `samd-incident-responder` ClusterRole). A model's
deployers and reviewers can read it, not write it. The operator scales a quarantined model to zero
and the admission webhook refuses its new pods until it is cleared.
"""

from __future__ import annotations

import datetime
from typing import Any

import click

from samd.cli.output import CliState, emit
from samd.errors import SamdError, UsageError

GROUP, VERSION, PLURAL = "samd.dev", "v1alpha1", "securemodels"
RESPONDER_ROLE = "samd-incident-responder"


class ClusterError(SamdError):
    """The API server refused or could not be reached."""

    exit_code = 5


def _state(context: click.Context) -> CliState:
    state = context.find_object(CliState)
    return state if state is not None else context.ensure_object(CliState)


def _client(kubeconfig: str | None, context: str | None) -> Any:
    from lightkube import Client, KubeConfig  # noqa: PLC0415 - only these commands need it
    from lightkube.core.exceptions import ConfigError  # noqa: PLC0415

    try:
        config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
        return Client(
            config=config.get(context_name=context) if context else config, field_manager="samd-cli"
        )
    except (ConfigError, OSError) as error:
        raise UsageError(
            f"cannot read the Kubernetes configuration: {error}", hint="set KUBECONFIG or pass --kubeconfig"
        ) from error


def _model_resource() -> Any:
    from lightkube.generic_resource import create_namespaced_resource  # noqa: PLC0415

    return create_namespaced_resource(GROUP, VERSION, "SecureModel", PLURAL)


def _who_am_i(client: Any) -> str:
    """The user name the API server knows us by (a SelfSubjectReview); the audit log has it too."""
    from lightkube.core.exceptions import ApiError  # noqa: PLC0415
    from lightkube.resources.authentication_v1 import SelfSubjectReview  # noqa: PLC0415

    try:
        review = client.create(SelfSubjectReview())
    except ApiError:
        return ""
    info = review.status.userInfo if review.status is not None else None
    return str(info.username) if info is not None and info.username else ""


def _api_error(error: Any, model: str, namespace: str, action: str) -> SamdError:
    code = getattr(error.status, "code", None)
    if code == 404:
        return UsageError(f"SecureModel {model} does not exist in namespace {namespace}")
    if code == 403:
        return ClusterError(
            f"you may not {action} the quarantine of SecureModel {model} in namespace {namespace}: "
            "that needs the right to patch securemodels/status",
            hint=f"ask a cluster admin to bind you to the ClusterRole {RESPONDER_ROLE} (kubectl create "
            f"rolebinding ... --clusterrole={RESPONDER_ROLE} --user=YOU --namespace={namespace})",
        )
    return ClusterError(f"the API server refused to {action} the quarantine: {error}")


def _write(
    kubeconfig: str | None, context: str | None, namespace: str, model: str, quarantine: dict[str, Any]
) -> dict[str, Any]:
    from lightkube.core.exceptions import ApiError  # noqa: PLC0415
    from lightkube.types import PatchType  # noqa: PLC0415

    resource = _model_resource()
    action = "set" if quarantine["active"] else "clear"
    try:
        with _client(kubeconfig, context) as client:  # closed: no connection left open behind us
            client.get(resource, model, namespace=namespace)  # a clear "does not exist" before the write
            quarantine["by"] = _who_am_i(client) or "unknown"
            client.patch(
                resource.Status,
                model,
                {"status": {"quarantine": quarantine}},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
    except ApiError as error:
        raise _api_error(error, model, namespace, action) from error
    except OSError as error:
        raise ClusterError(f"cannot reach the API server: {error}") from error
    return quarantine


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


cluster_options = [
    click.option("--namespace", "-n", required=True, help="The SecureModel's namespace."),
    click.option("--kubeconfig", metavar="PATH", help="Kubernetes configuration (default: KUBECONFIG)."),
    click.option("--context", "kube_context", metavar="NAME", help="The kubeconfig context to use."),
]


def _with_cluster_options(function: Any) -> Any:
    for option in reversed(cluster_options):
        function = option(function)
    return function


@click.group(name="quarantine")
def quarantine() -> None:
    """Quarantine a SecureModel (scaled to zero, new pods refused) or clear its quarantine.

    Needs the right to patch securemodels/status (the chart's samd-incident-responder ClusterRole);
    a model's deployers and reviewers do not have it. Each change is recorded: a Kubernetes Event and
    the Quarantined condition on the model, a CloudEvent, and the API server's audit log.

    \b
    Examples:
      samd quarantine set fraud-detection -n ml-prod --message "INC-4711: scraping suspected"
      samd quarantine show fraud-detection -n ml-prod
      samd quarantine clear fraud-detection -n ml-prod --message "INC-4711 closed"
    """


@quarantine.command(name="set")
@click.argument("model")
@_with_cluster_options
@click.option("--reason", default="Manual", show_default=True, help="Why, machine-readable (CamelCase).")
@click.option("--message", required=True, help="Why, for the people who read the model's status.")
@click.option("--json", "json_output", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def set_quarantine(  # noqa: PLR0917 - click passes every option
    context: click.Context,
    model: str,
    namespace: str,
    kubeconfig: str | None,
    kube_context: str | None,
    reason: str,
    message: str,
    json_output: bool,
) -> None:
    """Quarantine MODEL: the operator scales it to zero and the webhook refuses its pods."""
    state = _state(context)
    state.json = state.json or json_output
    if not reason.isidentifier():
        raise UsageError(f"--reason {reason!r} must be one CamelCase word, like Manual or SuspectedTheft")
    written = _write(
        kubeconfig,
        kube_context,
        namespace,
        model,
        {"active": True, "reason": reason, "message": message, "since": _now()},
    )
    emit(
        state, written, f"SecureModel {namespace}/{model} quarantined by {written['by']}: {reason}: {message}"
    )


@quarantine.command(name="clear")
@click.argument("model")
@_with_cluster_options
@click.option("--message", default="cleared", show_default=True, help="Why it is safe again.")
@click.option("--json", "json_output", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def clear_quarantine(  # noqa: PLR0917 - click passes every option
    context: click.Context,
    model: str,
    namespace: str,
    kubeconfig: str | None,
    kube_context: str | None,
    message: str,
    json_output: bool,
) -> None:
    """Clear MODEL's quarantine: the operator scales it back and the webhook admits its pods."""
    state = _state(context)
    state.json = state.json or json_output
    written = _write(
        kubeconfig,
        kube_context,
        namespace,
        model,
        {"active": False, "reason": "Cleared", "message": message, "since": _now()},
    )
    emit(state, written, f"SecureModel {namespace}/{model}: quarantine cleared by {written['by']}")


@quarantine.command(name="show")
@click.argument("model")
@_with_cluster_options
@click.option("--json", "json_output", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def show_quarantine(  # noqa: PLR0917 - click passes every option
    context: click.Context,
    model: str,
    namespace: str,
    kubeconfig: str | None,
    kube_context: str | None,
    json_output: bool,
) -> None:
    """Show whether MODEL is quarantined, why, since when and by whom."""
    from lightkube.core.exceptions import ApiError  # noqa: PLC0415

    state = _state(context)
    state.json = state.json or json_output
    try:
        with _client(kubeconfig, kube_context) as client:
            found = client.get(_model_resource(), model, namespace=namespace)
    except ApiError as error:
        raise _api_error(error, model, namespace, "read") from error
    status = found.status or {}
    written = dict(status.get("quarantine") or {"active": False})
    if written.get("active"):
        text = (
            f"SecureModel {namespace}/{model} is quarantined since {written.get('since')} by {written.get('by')}: "
            f"{written.get('reason')}: {written.get('message')}"
        )
    else:
        text = f"SecureModel {namespace}/{model} is not quarantined"
    emit(state, written, text)
