"""The console scripts' entry point (``kubectl-projectorset``, ``kubectl-pjs``).

The plugin's own packages (rich) come with the ``plugin`` extra, which the operator's image leaves
out: without them the command says what to install instead of ending in a traceback.
"""

from __future__ import annotations

import sys

PLUGIN_PACKAGES = ("rich",)


def main() -> None:
    try:
        from projectorset.plugin import cli
    except ModuleNotFoundError as error:
        package = (error.name or "").partition(".")[0]
        if package not in PLUGIN_PACKAGES:
            raise
        print(
            f"error: the kubectl plugin needs the Python package {package!r}, which is not installed: "
            "pip install 'projectorset-operator[plugin]'",
            file=sys.stderr,
        )
        sys.exit(1)
    sys.exit(cli.main())
