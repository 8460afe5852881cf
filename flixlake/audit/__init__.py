"""Oversight jobs over the lake.

* :mod:`~flixlake.audit.feedback` — feedback loops over successive retrains: concentration and
  popularity of what is served and what is watched, per retrain cycle and experiment variant.
"""
