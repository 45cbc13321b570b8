"""Drift monitoring: per algorithm, its recent inputs (scanner model, kernel, kVp, slice
thickness, pixel spacing, not-assessed rate and reasons) and outputs (positive rate,
probabilities, readers' agreement) against a baseline recorded at go-live.

``statistics`` (PSI, KS, chi-square, Fisher: pure), ``sample`` (results of a period as the
distributions compared), ``baseline`` (record and read baselines), ``monitor`` (the
comparison, states and reasons, cached), ``metrics`` (the Prometheus gauges), ``api`` and
``cli`` (``/api/drift``, ``radrouter drift``).
"""
