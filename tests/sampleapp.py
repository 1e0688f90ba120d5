"""The sample app, under its former name: it lives in :mod:`rollbackd.demo.sampleapp` so that an
installed rollbackd can run it (``python -m rollbackd.demo.sampleapp``). ``python -m
tests.sampleapp`` and imports from here keep working."""

from __future__ import annotations

from rollbackd.demo.sampleapp import (
    MAX_IN_FLIGHT,
    Behaviour,
    Exposition,
    FakeProfile,
    SampleApp,
    fake_deployment_names,
    fake_profile,
    logger,
    main,
    make_app,
    parse_args,
)

__all__ = [
    "MAX_IN_FLIGHT",
    "Behaviour",
    "Exposition",
    "FakeProfile",
    "SampleApp",
    "fake_deployment_names",
    "fake_profile",
    "logger",
    "main",
    "make_app",
    "parse_args",
]

if __name__ == "__main__":
    main()
