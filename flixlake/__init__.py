"""flixlake: lambda-architecture movie recommendations on Kafka, Spark and Delta Lake.

The folders are the architecture, and imports point one way (``lint-imports`` checks it):

* :mod:`flixlake.ops` — the ``flixlake`` command, the demo, the broker, job entry plumbing;
* :mod:`flixlake.serving`, :mod:`flixlake.streaming`, :mod:`flixlake.sim` — the service, the
  speed layer, the simulated world;
* :mod:`flixlake.experiments` — routing users to models, online evaluation, A/B statistics;
* :mod:`flixlake.batch` — ingest, silver, quality gate, training, evaluation, registry, publish;
* :mod:`flixlake.lake` — the table registry, Delta I/O (delta-rs and Spark), run manifests;
* :mod:`flixlake.contract` — the MLiP log line, the served record, the Kafka topics;
* :mod:`flixlake.config` — settings, validated once.
"""
