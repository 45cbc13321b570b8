"""MS lesion segmentation: brain FLAIR generator, 2-D U-Net, training, evaluation."""
