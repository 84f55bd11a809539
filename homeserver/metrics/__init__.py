"""Prometheus metrics: the families (``registry``), the HTTP middleware that times requests
(``requests``), and the listener that serves them (``listener``). docs/metrics.md lists
every family."""
