"""The DiffFace teacher: identity-conditional diffusion with facial guidance and target-preserving blending."""
