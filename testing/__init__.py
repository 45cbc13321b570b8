"""Test and benchmark helpers (not shipped): real peers (Orthanc, storescp), validators, DICOM writers."""
