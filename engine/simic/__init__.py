"""Simic: Tamiyo learns her policy from growth episodes, and must beat the heuristic to be trusted.

episode.py runs short growth runs in worker processes; reward.py turns them into per-decision rewards that do not
pay for growth itself; bandit.py (a linear contextual bandit, LinUCB) and ppo.py (stable-baselines3's MaskablePPO
over a gymnasium environment) learn from them; gate.py plays a candidate against the heuristic and the current
policy on held-out data seeds; trainer.py drives it all, resumable (`esper-tui simic train`). The policy Tamiyo
follows is training/learned.py (features, actions, scores), loaded by training/follow.py.
"""
