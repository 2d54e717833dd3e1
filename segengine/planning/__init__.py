"""Planning: a recipe derived from the data, for the resources the run will have and the time it is given.

nnU-Net's lesson (a dataset fingerprint and rules that turn it into a configuration), planned for this machine or
cluster and a wall-clock budget instead of a GPU and 1000 epochs: `segdata.fingerprint` measures the training split,
`rules` turn the fingerprint and the resources into the recipe's keys (pure functions, each with its reason),
`probe` times real training steps of the candidate, and `plan` writes the recipe file (`plan.yaml`) that `train
--config` and `tune --config` run. docs/planning.md lists every rule and where it comes from.
"""

from segengine.planning.plan import DEFAULT_BUDGET_S, FINGERPRINT_FILE, PLAN_FILE, Plan, make_plan

__all__ = ["DEFAULT_BUDGET_S", "FINGERPRINT_FILE", "PLAN_FILE", "Plan", "make_plan"]
