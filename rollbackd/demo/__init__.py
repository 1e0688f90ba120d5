"""``rollbackd demo``: a bad release undoes itself, end to end, on one machine.

An emulated Kubernetes API (kmock, from the ``demo`` extra), real sample-app processes as the
pods, a load generator following the emulated routing, a real Prometheus when one is installed,
and the real daemon. See :mod:`rollbackd.demo.runner`.
"""

from __future__ import annotations

import argparse
import sys


def cli_demo(args: argparse.Namespace) -> int:
    """Entry point of ``rollbackd demo`` (``args.scenario``, ``args.no_prometheus``): says plainly
    when the demo extra is missing, else runs :func:`rollbackd.demo.runner.run_cli`."""
    try:
        import kmock  # noqa: F401  -- the emulated Kubernetes API
    except ImportError:
        print("rollbackd demo needs kmock for its emulated Kubernetes API, from the demo extra: "
              "pip install 'rollbackd[demo]'", file=sys.stderr)
        return 1
    from rollbackd.demo.runner import run_cli

    return run_cli(args)
