"""The overoptimization lab: optimize a small model against a reward and measure collapse as it appears.

`run_lab` (train.py) trains LoRA adapters with RLOO and a KL penalty to the start model, saving checkpoints
and a curve file; `probe.py` says what each checkpoint measures; `report.py` draws the curves and a page of
samples; `modescope.cli.lab` holds the `modescope lab` commands.
"""
