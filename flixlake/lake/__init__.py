"""The lake: the table registry, Delta I/O and the batch runs' manifests.

:mod:`~flixlake.lake.tables` names every table, its one writer and schema;
:mod:`~flixlake.lake.store` reads and writes through delta-rs (no JVM: the service and the CLI use
it); :mod:`~flixlake.lake.spark_io` is the Spark side; :mod:`~flixlake.lake.registry` reads and
updates the ``models`` table; :mod:`~flixlake.lake.bronze` turns raw lines into bronze rows for
file ingest and the stream alike; :mod:`~flixlake.lake.forget` removes a user from every table
that declares user data, for good.
"""
