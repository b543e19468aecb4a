"""Where faces come from: the synthetic face world and folder data sets."""
