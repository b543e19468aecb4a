"""The first stage: small face experts (identity, parser, gaze) trained on the synthetic world, for runs
without the official weights. Loading any expert, trained here or official, is facekit.experts.expert_loader's job."""
