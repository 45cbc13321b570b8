"""The audit trail: who touched which patient's data, as DICOM audit messages (PS3.15 A.5).

The pipeline only *records* typed events (``events.py``) through an ``AuditRecorder``; the
trail (``trail.py``) is an observer that composes the messages (``compose.py``, ``messages.py``)
in its own thread, appends them to a local log (``log.py``) and forwards them to a syslog
collector (``syslog.py``). Recording never blocks the caller and never raises into it.
"""
