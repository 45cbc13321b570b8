"""External algorithms: a vendor's service run on a de-identified copy of the series, and its
answer brought back, re-identified, into the same result path as a local algorithm's.

- ``declared``: what the YAML declares, as the ``AlgorithmInfo`` and de-identification options
  the rest of radrouter uses;
- ``outbound``: one job's series de-identified (``router.deidentify``) and sent to the vendor
  (C-STORE or STOW-RS); the job then waits without holding a worker;
- ``vendor_report``: what a vendor's TID 1500 SR states, as an ``AlgorithmResult``;
- ``answers``: the stage that takes a complete answer (held apart at ingest), re-identifies and
  checks it, and writes the result, or, past the time limit, "no answer from VENDOR".
"""
