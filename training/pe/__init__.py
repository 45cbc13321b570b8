"""Pulmonary embolism flagging: CTPA / follow-up CT generator, 3-D U-Net, training, evaluation."""
