"""Paper 2: how people read model confidence, and the human-model calibration gap."""
