"""Tests of dicom_sr: the TID 1500 writer, its reader, UIDs and Part-10 encoding."""
