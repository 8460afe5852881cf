"""The batch layer: file ingest, bronze -> silver, quality gate, detection of attacker accounts,
ALS training, offline evaluation, registration with provenance and the gated publication of the
batch view.

:mod:`~flixlake.batch.pipeline` lists the steps in order; ``jobs/*.py`` runs each one as a
spark-submit job and ``dags/flixlake_batch.py`` schedules them.
"""
