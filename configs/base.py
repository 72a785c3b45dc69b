"""Condition 'base': no fine-tuning; `metacog eval` scores the model as loaded. See configs/common.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402


def get_config(arg=None):
    c, _ = common.experiment("none", arg)
    c.train.steps = 0
    return c
