"""Preference tuning and RLHF: losses.py (Bradley-Terry, DPO/IPO, RLOO, KL estimators: pure tensor functions),
reward.py (the reward model), rollout.py (sampling through the engine). The loops live in opengemma/recipes."""
