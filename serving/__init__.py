"""The HTTP service: ``GET /recommend/<userid>`` from the batch view merged with the speed views.

Modules: :mod:`serving.views` (in-memory views as numpy arrays, loaded through delta-rs),
:mod:`serving.recommender` (the merge rule, experiment routing, background refresh and atomic
swaps), :mod:`serving.telemetry` (every answer to Kafka, off the request path),
:mod:`serving.monitoring` (Prometheus metrics) and :mod:`serving.app` (the ASGI app and
``run_server``). Nothing here imports pyspark.
"""
