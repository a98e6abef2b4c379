"""sni-exporter: tells which TLS endpoints need SNI, as Prometheus metrics.

Layout (pure core apart from a thin I/O shell):

- pure: ``reasons`` (failure vocabulary and error types), ``model`` (frozen
  data), ``certs`` (DER to facts, hostname match, chain checks), ``verdict``
  (two handshakes to findings), ``config`` (targets.yaml validation),
  ``metrics`` (exposition rendering), ``report`` (JSON and tables), ``shard``.
- I/O: ``probe`` (the only module that opens sockets), ``scheduler``,
  ``server`` (HTTP), ``cli``; ``demo`` starts the loopback demo fleet.
"""

__version__ = "0.1.0"
