"""`launch.py tune`: Ray Tune over the training worker function.

Ray 2.60 pattern: Tune runs a driver function per trial (`trial`). With `workers_per_trial: 0` the trial runs the
worker function in-process (reporting through `ray.tune.report`; cheapest start-up, the laptop default); with N >= 1
the trial builds and fits a TorchTrainer whose metrics reach Tune through `TuneReportCallback`. Either way the same
`train_func` trains and metrics reach Tune every epoch (ASHA stops trials, PBT exploits them). In-process trials
report `tune.Checkpoint`s that Tune keeps (`CheckpointConfig`) and restores; a TorchTrainer keeps its own and its
path travels as the metric `checkpoint_path`. Results come from Tune's `ResultGrid` (`results`). The param space
(`space`) holds what is searched: the training config as one nested entry (`train`) and the sampled per-class
weights (`class_weights`); constants (the validated data, the search folder) reach the trials through
`tune.with_parameters`. The search file itself is `segengine.search_config.SearchConfig`.

Modules: `space` (param space, searched columns, the recipe's point), `factories` (scheduler, searcher,
concurrency), `trial` (Tune's function per trial), `progress` (a line per trial-epoch), `results` (table,
best.yaml, plot), `run` (the search itself).
"""

from segengine.tuning.run import tune_run

__all__ = ["tune_run"]
