"""Oversight of the running system as Prometheus metrics, each the way its kind of process suits.

* :mod:`~flixlake.monitoring.availability` — availability from the course's ``recommendation
  request`` lines on the Kafka topic (the client's view: refused and timed-out calls count);
* :mod:`~flixlake.monitoring.lake_metrics` — model staleness (``models``) and online quality per
  variant (``online_evaluations``), read from the lake;
* :mod:`~flixlake.monitoring.exporter` — the long-running ``flixlake monitor`` process that serves
  both on a scrape endpoint;
* :mod:`~flixlake.monitoring.push` — batch jobs and DAG runs push to the Pushgateway when they end
  (they do not live long enough to be scraped).

The service (``/metrics``) and, next, the speed layer export their own metrics; the names,
rules and dashboards are in the repository's ``monitoring/`` folder.
"""
