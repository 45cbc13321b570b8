"""Findings to DICOM: TID 1500 SR (and later SEG, KOS), coded concepts, UIDs."""
