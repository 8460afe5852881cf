"""The HTTP service: ``GET /recommend/<userid>`` from the batch view merged with the speed views.

Modules: :mod:`~flixlake.serving.views` (in-memory views as numpy arrays, loaded through delta-rs),
:mod:`~flixlake.serving.recommender` (the merge rule and experiment routing),
:mod:`~flixlake.serving.refresh` (background refresh and atomic swaps),
:mod:`~flixlake.serving.telemetry` (every answer to Kafka via librdkafka, never blocking),
:mod:`~flixlake.serving.monitoring` (Prometheus metrics) and :mod:`~flixlake.serving.app` (the ASGI
app and ``run_server``). Nothing here imports pyspark or Airflow (``lint-imports`` checks it).
"""
