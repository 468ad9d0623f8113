"""`python -m bench [SUITE...]`: run benchmark suites, print their tables, update docs/benchmarks.md."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from bench import admission, admission_e2e, artifact, serving, storage
from bench import operator as operator_suite
from bench.report import Row, text_table, write_section


def report(
    options: argparse.Namespace, suite: str, title: str, rows: Sequence[Row], section: Callable[[str], str]
) -> bool:
    """Print the suite's table, write its section of docs/benchmarks.md (`section` takes the command that
    produced it), and say whether every target was met."""
    print(f"\n{suite} suite")
    print(text_table(rows))
    if options.write_docs:
        command = "make bench" if options.suites == [] else f"python -m bench {' '.join(options.suites)}"
        write_section(suite, title, section(command))
    return all(row.passed is not False for row in rows)


def run_artifact(options: argparse.Namespace) -> bool:
    settings = artifact.Settings(
        size_mib=artifact.parse_size(options.size),
        small_mib=artifact.parse_size(options.small_size),
        repeat=options.repeat,
        keep=options.keep,
    )
    rows = artifact.run(settings)
    return report(
        options,
        "artifact",
        "Artifact core: encrypt and fetch",
        rows,
        lambda command: artifact.section(rows, settings, command),
    )


def run_storage(options: argparse.Namespace) -> bool:
    settings = storage.Settings(
        size_mib=artifact.parse_size(options.storage_size), repeat=min(options.repeat, 3)
    )
    rows = storage.run(settings)
    return report(
        options,
        "storage",
        "S3 storage: uploads, downloads and a broken connection",
        rows,
        lambda command: storage.section(rows, settings, command),
    )


def run_operator(options: argparse.Namespace) -> bool:
    settings = operator_suite.Settings(
        counts=operator_suite.parse_counts(options.models), timeout=options.operator_timeout
    )
    rows = operator_suite.run(settings)
    return report(
        options,
        "operator",
        "Operator: SecureModels until Ready",
        rows,
        lambda command: operator_suite.section(rows, command),
    )


def run_object_set(options: argparse.Namespace) -> bool:
    settings = operator_suite.Settings(
        counts=operator_suite.parse_counts(options.object_set_models), timeout=options.operator_timeout
    )
    rows = operator_suite.run_object_set(settings, options.object_set_rounds)
    return report(
        options,
        "object-set",
        "Operator: object-set candidates, measured side by side",
        rows,
        lambda command: operator_suite.object_set_section(rows, command),
    )


def run_admission(options: argparse.Namespace) -> bool:
    settings = admission.Settings(
        duration=options.admission_seconds,
        connections=options.admission_connections,
        repeat=min(options.repeat, 3),  # three 40-second rounds are enough to see past interruptions
    )
    rows = admission.run(settings)
    return report(
        options,
        "admission",
        "Admission webhook: reviews over TLS",
        rows,
        lambda command: admission.section(rows, settings, command),
    )


def run_admission_e2e(options: argparse.Namespace) -> bool:
    settings = admission_e2e.Settings(
        duration=options.admission_seconds, connections=options.admission_e2e_connections
    )
    rows = admission_e2e.run(settings)
    return report(
        options,
        "admission-e2e",
        "Admission end to end: pods created through the API server",
        rows,
        lambda command: admission_e2e.section(rows, settings, command),
    )


def run_serving(options: argparse.Namespace) -> bool:
    settings = serving.Settings(
        duration=options.serving_seconds,
        connections=options.serving_connections,
        repeat=min(options.repeat, 3),
    )
    rows = serving.run(settings)
    return report(
        options,
        "serving",
        "Serving: predictions over mTLS",
        rows,
        lambda command: serving.section(rows, settings, command),
    )


SUITES: dict[str, Callable[[argparse.Namespace], bool]] = {
    "artifact": run_artifact,
    "operator": run_operator,
    "object-set": run_object_set,
    "admission": run_admission,
    "admission-e2e": run_admission_e2e,
    "serving": run_serving,
    "storage": run_storage,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("suites", nargs="*", help=f"suites to run (default: all): {', '.join(SUITES)}")
    parser.add_argument("--size", default="1G", help="model size for the artifact suite (default 1G)")
    parser.add_argument("--small-size", default="64M", help="the small model, to show memory is constant")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best is kept")
    parser.add_argument("--keep", action="store_true", help="keep the artifacts in the scratch directory")
    parser.add_argument(
        "--storage-size", default="128M", help="object size for the storage suite (default 128M)"
    )
    parser.add_argument("--models", default="100,1000", help="SecureModel counts for the operator suite")
    parser.add_argument(
        "--object-set-models", default="150", help="SecureModel count for the object-set suite (A/B)"
    )
    parser.add_argument(
        "--object-set-rounds", type=int, default=2, help="turns of each variant in the object-set suite"
    )
    parser.add_argument(
        "--operator-timeout", type=float, default=600.0, help="seconds to wait for each batch to be ready"
    )
    parser.add_argument(
        "--admission-seconds", type=float, default=10.0, help="measured seconds per admission case"
    )
    parser.add_argument(
        "--admission-e2e-connections",
        type=int,
        default=8,
        help="keep-alive connections creating pods through the API server (admission-e2e suite)",
    )
    parser.add_argument(
        "--admission-connections",
        type=int,
        default=4,
        help="keep-alive TLS connections of the load generator",
    )
    parser.add_argument(
        "--serving-seconds", type=float, default=8.0, help="measured seconds per serving case"
    )
    parser.add_argument(
        "--serving-connections", type=int, default=4, help="keep-alive mTLS connections of the serving load"
    )
    parser.add_argument(
        "--no-docs", dest="write_docs", action="store_false", help="do not rewrite docs/benchmarks.md"
    )
    options = parser.parse_args(argv)
    unknown = [name for name in options.suites if name not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(SUITES)}")
    selected = options.suites or list(SUITES)
    all_met = True
    for name in selected:
        all_met = SUITES[name](options) and all_met
    if not all_met:
        print("\nsome targets were missed (MISS above)", file=sys.stderr)
    # Benchmarks report; they do not fail the build on a missed target.
    return 0


if __name__ == "__main__":
    sys.exit(main())
