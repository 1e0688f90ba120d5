"""The daemon (``rollbackd run``): wiring only.

- :mod:`.main`: the process edge (configuration, logging, signals, the real sources);
- :mod:`.wiring`: :func:`~rollbackd.daemon.wiring.open_daemon`, the daemon assembled with its
  journal, store and events (used by ``rollbackd run``, the demo and the tests alike);
- :mod:`.app`: :class:`~rollbackd.daemon.app.Daemon`, one supervised task group (evaluation loop,
  HTTP server);
- :mod:`.tick`: one tick's data collection and the drift-free schedule;
- :mod:`.state`: per-target evaluators and decisions, runtime switches, holds, rollback ledger;
- :mod:`.http` and :mod:`.views`: probes, ``/metrics`` and the JSON API;
- :mod:`.metrics`, :mod:`.logs`, :mod:`.jsonify`: the daemon's metrics registry, structured
  logs, and JSON encoding of domain values.
"""
