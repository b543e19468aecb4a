"""The frozen expert networks (identity, face parsing, gaze) and the one loader for every format."""
