"""Experiments: routing users to model versions, online evaluation of what was served, and the
statistics and report that compare variants.
"""
