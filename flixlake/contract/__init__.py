"""The contract with the outside world: the MLiP log line, the served record, the Kafka topics.

Nothing here knows about Spark or Delta; every other layer may use it.
"""
