"""Operator commands: ``rollbackd status``, ``freeze``, ``hold``, ``rollback`` ... talking to a
running daemon's HTTP API (:mod:`rollbackd.ctl.client`), printing its answers as a table, JSON or
YAML (:mod:`rollbackd.ctl.render`); the verbs themselves are in :mod:`rollbackd.ctl.verbs`."""
