"""The DiffFace teacher: identity-conditional diffusion with facial guidance and target-preserving blending.

unet.py        the UNet in guided-diffusion's layout (+ id_embed), presets in presets/unet_*.yaml
diffusion.py   schedules, respacing, hybrid loss, DDPM/DDIM steps (shared by training and sampling)
experts.py     the frozen facial experts and the one [-1,1] → [0,1] conversion
guidance.py    identity (with the extending augmentation), semantic, gaze energies per sample
sampling.py    guided batched sampling with blending; presets/swap_{paper,official,demo}.yaml
train.py       training (EMA, bf16, checkpoints that resume exactly, snapshots, torchrun)
checkpoint.py  official Model.pt loading (weights only) and our safetensors files
pairs.py       the paired data set format (writer + reader) and its sharded, resumable generation
data.py        training faces (synthetic world or a folder data set)
bench.py       guided-step cost and swaps/minute
cli.py         `distilswap teacher train|swap|bench`, `distilswap pairs generate|info`
"""
