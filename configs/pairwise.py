"""Condition 'C': fine-tune on the pairwise task. See configs/common.py for the sweep string."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402


def get_config(arg=None):
    return common.experiment("pairwise", arg)[0]
