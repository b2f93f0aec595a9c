"""The gateway's monitors: out-of-distribution score per answer, input and class drift.

`GatewayMonitor` (monitor.py) is what the gateway calls; the parts are one
concern each: `features` (per-image statistics), `window` (O(1) sliding
counts), `psi` (the drift index), `references` (each version's
reference.json from the store), `metrics` (the Prometheus series), `config`.
docs/monitoring.md says what each signal means and what to do when it fires.
"""
