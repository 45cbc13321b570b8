"""Multiple sclerosis lesion segmentation on brain FLAIR MRI, with change against a prior exam."""
