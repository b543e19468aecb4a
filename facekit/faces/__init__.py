"""Faces in and out: image and video I/O, detection, alignment, landmark smoothing."""
