"""The ground floor every stage stands on (it imports no stage):

experts/  the frozen expert networks (IR-SE ArcFace, BiSeNet, EyeNet, ONNX embedders) and the one loader
faces/    image and video I/O, face detection, alignment, landmark smoothing
world/    the synthetic face world and folder data sets
pairs.py, pair_stream.py, pair_convert.py   the pair format: WebDataset shards, streaming, conversion
metrics.py  config.py (settings)  files.py (atomic writes)  resume.py  training.py (DDP, EMA)
checkpoints.py, safe_pickle.py, torch_pickle.py, shipped.py   reading weights without executing pickles
onnx_runtime.py (every ORT session), onnx_swapper.py (external one-shot swappers), quiet.py, errors.py, cli.py
"""
