"""The speed layer: Kafka micro-batches into exactly-once bronze and quarantine, fresh speed views,
and the service's served records landed in the lake.

:mod:`~flixlake.streaming.job` runs both queries; :mod:`~flixlake.streaming.harness` is what they
share (checkpoint, stop protocol, batch report); :mod:`~flixlake.streaming.events` and
:mod:`~flixlake.streaming.served` are their per-batch processors; :mod:`~flixlake.streaming.views`
holds the pure view maths and :mod:`~flixlake.streaming.state` reads state back from the lake.
"""
