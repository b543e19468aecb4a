"""The whole pipeline as one command: `distilswap run` (run.py: the stages of a YAML config, each finished one
cached) and `distilswap report` (report.py: every stage's tables, pictures, curves and artifacts on one page)."""
