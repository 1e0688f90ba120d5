"""The probe of every target's series (:mod:`rollbackd.sources.probe`) where people see it: once at
daemon start-up, beside the ticks (logged, and shown on the status page), and on demand with
``rollbackd check-config --probe``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rollbackd.config.settings import Settings
from rollbackd.sources.probe import ProbeReport, Queries, probe

logger = logging.getLogger(__name__)

__all__ = ["ProbeOutcome", "probe_and_log"]


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """The start-up probe: its report, or why it could not be taken."""

    report: ProbeReport | None
    error: str | None = None


async def probe_and_log(settings: Settings, client: Queries) -> ProbeOutcome:
    """Probe every target once, log a blind target's sides at WARNING (one line each) and a
    summary at INFO; a failure is logged and returned, never raised."""
    try:
        report = await probe(settings, client)
    except Exception as exc:
        logger.warning("could not probe the targets' series: %s", exc, extra={"error": repr(exc)})
        return ProbeOutcome(report=None, error=str(exc) or type(exc).__name__)
    for target in report.blind:
        for line in target.lines():
            logger.warning("probe: %s", line, extra={"target": target.key, "preset": target.preset})
    logger.info(
        "probe: %d targets, %d blind", len(report.targets), len(report.blind),
        extra={"targets": len(report.targets), "blind": [target.key for target in report.blind]},
    )
    return ProbeOutcome(report=report)
