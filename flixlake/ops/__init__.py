"""Operating flixlake: the ``flixlake`` command, the live demo and its process supervisor, the
embedded broker, the Airflow client, and the plumbing of the spark-submit entry points.
"""
