"""Organ segmentation with nnU-Net v2 model folders (:mod:`.nnunet`): configure once, load the
weights once, segment many CTs; numpy in, numpy out."""
