"""Audits of the system's data and models: attacks on the model (detect, stream), drift, fairness."""
