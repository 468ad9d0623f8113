"""Run a module the way SAMD's image runs it: without the packages only the tests and benchmarks use.

The image installs SAMD's runtime dependencies alone (Containerfile). The development environment
also holds the test dependencies, and some libraries import what they find: kopf imports the
official Kubernetes client when it is installed, 18 MB of a process's memory that the operator in
its container never has. A benchmark process started through `argv_as_installed` gets an
ImportError for every top-level module that comes from a distribution outside SAMD's runtime
dependencies, as it would in the image.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from importlib import metadata

_NAME = re.compile(r"^[A-Za-z0-9._-]+")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def runtime_distributions(root: str = "samd") -> frozenset[str]:
    """`root` and everything its requirements without extras pull in, transitively (normalized names)."""
    seen: set[str] = set()
    queue = [root]
    while queue:
        name = _normalized(queue.pop())
        if name in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python
        seen.add(name)
        for requirement in requires:
            if "extra ==" in requirement.replace('"', " ").replace("'", " "):
                continue
            match = _NAME.match(requirement.strip())
            if match:
                queue.append(match.group(0))
    return frozenset(seen)


def not_in_image() -> list[str]:
    """Top-level modules installed here that only non-runtime distributions provide."""
    runtime = runtime_distributions()
    return sorted(
        module
        for module, distributions in metadata.packages_distributions().items()
        if module.isidentifier() and not any(_normalized(d) in runtime for d in distributions)
    )


def argv_as_installed(module: str, *args: str) -> list[str]:
    """`python -m module args...`, with the modules the image does not have made unimportable."""
    code = (
        "import runpy, sys; "
        f"sys.modules.update(dict.fromkeys({not_in_image()!r})); "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", code, *args]
