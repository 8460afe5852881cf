"""Oversight jobs over the lake: drift of every input, fairness and exposure per model version,
attacks on the model, feedback loops.

* :mod:`~flixlake.audit.distances` — PSI and Jensen-Shannon distance between two count vectors,
  pooling of rare categories (pure numpy/scipy);
* :mod:`~flixlake.audit.drift` — each input's distribution per window against a reference window
  (Spark), the ``audit_drift`` rows;
* :mod:`~flixlake.audit.models` — per model version: quality per user segment with intervals,
  exposure and calibration of its batch view and of what was served, the two requirements
  (measures and checks in :mod:`flixlake.batch.fairness`, shared with the publish gate);
* :mod:`~flixlake.audit.feedback` — feedback loops over successive retrains: concentration and
  popularity of what is served and what is watched, per retrain cycle and experiment variant;
* :mod:`~flixlake.audit.export` — Prometheus gauges (a registry to push, and a textfile);
* :mod:`~flixlake.audit.report` — one HTML page with plots per model version;
* :mod:`~flixlake.audit.job` — ``run_audit``, the daily step (``jobs/audit.py``,
  ``dags/flixlake_audit.py``);
* :mod:`~flixlake.audit.stream` — attack alert rules over a micro-batch's parsed events and small
  state (rate windows, new-account bursts), for the speed layer;
* :mod:`~flixlake.audit.measure` — detection precision/recall per attack kind on labelled
  injections, a target movie's exposure in served top-k lists.

The batch detection of attacker accounts is a step of the batch pipeline, so it lives in the
batch layer: :mod:`flixlake.batch.detect` and its account profiles, :mod:`flixlake.batch.profiles`.
"""
