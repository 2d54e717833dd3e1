"""`launch.py train --folds K`: K-fold cross-validation as concurrent Ray Tune trials, then its summary.

The driver checks the recipe and the data once (`runprep.prepare`), splits the training split into K seeded,
class-balanced folds (`segdata.folds`, kept in `folds.json`) and runs one Tune trial per fold: each trains the
recipe on the other folds and validates on its own (in the trial's process, or on a TorchTrainer of its own when
the recipe has workers), so a cluster trains the folds side by side. Every fold keeps its run in `fold-I/` (its
checkpoints, history, plots) and marks it finished there, so `--resume` runs only the unfinished folds and
`--fold I` trains one fold, from any machine that reaches the storage.

When every fold has finished, the summary: the fold models' out-of-fold predictions (each training image predicted
by the fold model that did not train on it) scored as one set, per-class IoU as mean and spread over the folds, a
decision rule chosen on the out-of-fold probabilities only (`ensemble.choose_decision`), and the val split scored by
the ensemble of the K models with that rule. `cv.json`, `ensemble.json` (what `evaluate`, `predict` and `export`
read from the run folder), `oof/` and `eval-val/`.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
from ray import tune

from segengine import ray_adapter, storage
from segengine.cluster import alive_node_ips, check_storage_for_cluster
from segengine.config import ConfigError, TrainConfig
from segengine.inference.ensemble import EnsemblePredictor, choose_decision
from segengine.inference.evaluation import evaluate_predictor
from segengine.inference.predictor import Predictor
from segengine.manifest import ENSEMBLE_FILE, Decision, EnsembleFile
from segengine.metrics import scores_from_confusion
from segengine.planning import Plan
from segengine.runprep import FOLDS_FILE, PreparedRun, RunError, fold_lists, prepare, save_config
from segengine.search_config import FifoScheduler, SearchConfig, Searcher, TrialResources
from segengine.tuning.factories import plan_concurrency
from segengine.tuning.progress import ProgressLines, tune_output_off
from segengine.tuning.trial import finished, fold_dir, train_fold

CV_FILE = "cv.json"
TUNE_FOLDER = "tune"  # Tune's own bookkeeping of the folds' trials (the folds keep their runs in fold-I/)


def fold_trial(config: dict[str, Any], *, train: dict[str, Any], data: dict[str, Any], folds: list[list[str]],
               run_dir: str, use_gpu: bool) -> None:
    """One fold as a Tune trial (constants bound with `tune.with_parameters`), reporting its epochs to Tune."""
    train_fold(TrainConfig.from_dict(train), data, folds, int(config["cv"]["fold"]), run_dir, use_gpu=use_gpu,
               reporter="fold", report_to_tune=True)


def _check(cfg: TrainConfig, fold: int | None) -> int:
    if cfg.folds is None:
        if fold is not None:
            raise ConfigError(f"--fold {fold} needs --folds K (or folds: in the recipe)")
        raise ConfigError("a cross-validation run needs --folds K")
    if fold is not None and not 0 <= fold < cfg.folds:
        raise ConfigError(f"--fold {fold}: use 0 to {cfg.folds - 1} (the run has {cfg.folds} folds)")
    if isinstance(cfg.workers, tuple):
        raise ConfigError(f"--folds with elastic --workers {cfg.workers[0]} {cfg.workers[1]}: give each fold a fixed "
                          "worker count")
    return cfg.folds


def _prepare(cfg: TrainConfig, fold: int | None, resume: bool, overwrite: bool) -> PreparedRun:
    """The run-name guard for a folds run: the whole run, or for `--fold I` the one fold (a run another command
    started is joined when its recipe is the same; the fold's folder needs --resume or --overwrite)."""
    if fold is None or cfg.name is None:
        return prepare(cfg, resume=resume, overwrite=overwrite)
    run_dir = storage.join(storage.resolve(cfg.storage), cfg.name)
    started = storage.exists(storage.join(run_dir, FOLDS_FILE))
    prep = prepare(cfg, resume=started, overwrite=False)
    target = fold_dir(prep.run_dir, fold)
    if storage.exists(target) and storage.list_dirs(target) + storage.list_files(target):
        if overwrite:
            storage.delete_dir(target)
        elif not resume:
            raise RunError(f"fold {fold} of run '{prep.cfg.name}' exists ({target}); add --resume to continue it "
                           "or --overwrite to train it again")
    return prep


def train_folds(cfg: TrainConfig, *, fold: int | None = None, resume: bool = False, overwrite: bool = False,
                plan: Plan | None = None, probs: bool = False) -> dict[str, Any]:
    """`train --folds K [--fold I]`: the unfinished folds as concurrent Tune trials, then (all folds finished)
    the cross-validation summary; returns it (or which folds are still missing)."""
    k = _check(cfg, fold)
    prep = _prepare(cfg, fold, resume, overwrite)
    cfg, run_dir = prep.cfg, prep.run_dir
    folds = fold_lists(prep, k)
    save_config(run_dir, cfg)
    if plan is not None:
        plan.save(run_dir)
    wanted = [fold] if fold is not None else list(range(k))
    todo = [i for i in wanted if finished(run_dir, i) is None]
    _print_folds(prep, folds, wanted, todo)
    if todo:
        _run_trials(prep, folds, todo)
    missing = [i for i in range(k) if finished(run_dir, i) is None]
    if missing:
        print(f"folds {', '.join(map(str, missing))} not trained yet: the summary follows when all {k} have "
              f"finished (train --folds {k} --name {cfg.name} --resume)")
        return {"run_dir": run_dir, "missing": missing}
    return summarize(prep, folds, probs=probs)


def _print_folds(prep: PreparedRun, folds: list[list[str]], wanted: list[int], todo: list[int]) -> None:
    cfg = prep.cfg
    sizes = ", ".join(str(len(f)) for f in folds)
    print(f"run        {cfg.name}  ->  {prep.run_dir}")
    print(f"folds      {len(folds)} folds of the {len(prep.data['train'])} '{cfg.train_split}' images (held out "
          f"per fold: {sizes}; seed {cfg.seed}; {FOLDS_FILE})")
    done = [i for i in wanted if i not in todo]
    if done:
        print(f"           fold(s) {', '.join(map(str, done))} finished already")


def _run_trials(prep: PreparedRun, folds: list[list[str]], todo: list[int]) -> None:
    """The folds to train as Tune trials, as many at once as the cluster holds; a fold whose trial fails (a lost
    node) is retried from its latest checkpoint."""
    cfg, run_dir = prep.cfg, prep.run_dir
    with ray_adapter.ray_session(cfg.address, cfg.plugins):
        check_storage_for_cluster(cfg.storage, alive_node_ips())
        use_gpu = ray_adapter.wants_gpu(cfg, cfg.workers)
        # the folds are a search of len(todo) trials of one recipe: its trial resources and how many fit at once
        folds_search = SearchConfig(train=cfg, samples=len(todo), scheduler=FifoScheduler(),
                                    searcher=Searcher(type="random"), resources=TrialResources(
                                        workers_per_trial=cfg.workers, cpus_per_worker=cfg.cpus_per_worker))
        resources, concurrent = plan_concurrency(folds_search, ray_adapter.cluster_capacity(), use_gpu)
        per = "in-process" if cfg.workers == 0 else f"{cfg.workers} Ray Train worker(s) x {cfg.cpus_per_worker} CPU"
        print(f"trials     fold(s) {', '.join(map(str, todo))}: {per} each{', GPU' if use_gpu else ''}, {concurrent} "
              f"at once on {ray_adapter.cluster_capacity()['CPU']:g} CPUs; {cfg.epochs} epochs each", flush=True)
        trainable = tune.with_resources(tune.with_parameters(
            fold_trial, train=cfg.to_dict(), data=prep.data, folds=folds, run_dir=run_dir, use_gpu=use_gpu),
            resources)
        tune_path = storage.join(run_dir, TUNE_FOLDER)
        if storage.exists(tune_path) or storage.list_dirs(tune_path):
            storage.delete_dir(tune_path)  # an earlier attempt's bookkeeping; the folds' runs are in fold-I/
        progress = ProgressLines(cfg.metric, {"fold": ("cv", "fold")})
        tuner = tune.Tuner(trainable, param_space={"cv": {"fold": tune.grid_search(todo)}},
                           tune_config=tune.TuneConfig(
                               max_concurrent_trials=concurrent,
                               trial_dirname_creator=lambda t: f"fold-{t.config['cv']['fold']}"),
                           run_config=tune.RunConfig(name=TUNE_FOLDER, callbacks=[progress], verbose=0,
                                                     failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                                                     **ray_adapter.storage_args(run_dir)))
        with tune_output_off():
            grid = tuner.fit()
    failed = [int(r.config["cv"]["fold"]) for r in grid if r.error is not None]
    if failed:
        first = next(r.error for r in grid if r.error is not None)
        raise RunError(f"fold(s) {', '.join(map(str, failed))} failed: {ray_adapter.failure_message(first)} "
                       f"(run folder {run_dir}; the other folds are kept: --resume trains only the unfinished ones)")


def _members(run_dir: str, k: int) -> list[str]:
    return [finished(run_dir, i)["checkpoint"] for i in range(k)]


def summarize(prep: PreparedRun, folds: list[list[str]], *, probs: bool = False) -> dict[str, Any]:
    """Out-of-fold scores (all and per fold), the decision rule chosen on them, the val split by the ensemble;
    cv.json and ensemble.json in the run folder."""
    cfg, run_dir = prep.cfg, prep.run_dir
    started = time.perf_counter()
    members = [Predictor.from_checkpoint(path, cfg.plugins, verbose=False) for path in _members(run_dir, len(folds))]
    print(f"\nout-of-fold: each of the {sum(map(len, folds))} '{cfg.train_split}' images predicted by the fold "
          "model that did not train on it", flush=True)
    oof = evaluate_predictor(EnsemblePredictor(members, Decision(), path=run_dir, folds=folds), cfg.data,
                             split=cfg.train_split, out=storage.join(run_dir, "oof"), probs=probs, verbose=False)
    decision = choose_decision(oof.scores.p1_hist) if prep.meta.num_classes == 2 else Decision()
    EnsembleFile(members=[_relative(p, run_dir) for p in _members(run_dir, len(folds))], decision=decision,
                 folds=folds).write(run_dir)
    val = _score_val(prep, members, decision, probs)
    summary = _cv_summary(prep, folds, oof, decision, val)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    storage.write_bytes(storage.join(run_dir, CV_FILE), json.dumps(summary, indent=1).encode())
    print(format_cv(summary))
    print(f"wrote {CV_FILE}, {ENSEMBLE_FILE}, oof/{', eval-val/' if val else ''} in {run_dir}\n  python launch.py "
          f"predict {run_dir} IMAGES --out OUT    (the {len(folds)} fold models as one ensemble)")
    return summary


def _relative(path: str, root: str) -> str:
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


def _score_val(prep: PreparedRun, members: list[Predictor], decision: Decision, probs: bool):
    """The val split by the ensemble with the chosen rule; None when the dataset has no labelled val split."""
    if not prep.data["val"] or any(row[2] is None for row in prep.data["val"]):
        return None
    return evaluate_predictor(EnsemblePredictor(members, decision, path=prep.run_dir), prep.cfg.data,
                              split=prep.cfg.val_split, out=storage.join(prep.run_dir, "eval-val"), probs=probs,
                              verbose=False)


def _cv_summary(prep: PreparedRun, folds: list[list[str]], oof, decision: Decision, val) -> dict[str, Any]:
    names = list(prep.meta.classes)
    per_fold = np.stack([list(scores_from_confusion(oof.groups[i].confusion)["iou"].values())
                         for i in range(len(folds))])
    fold_miou = np.nanmean(per_fold, axis=1)
    best = {i: finished(prep.run_dir, i) for i in range(len(folds))}

    def num(value: float) -> float | None:
        return None if not math.isfinite(value) else round(float(value), 4)

    return {
        "run_dir": prep.run_dir, "k": len(folds), "split": prep.cfg.train_split, "metric": prep.cfg.metric,
        "folds": [{"fold": i, "images": len(folds[i]), "checkpoint": best[i]["checkpoint"],
                   "epoch": best[i]["metrics"].get("epoch"), prep.cfg.metric: best[i]["metrics"].get(prep.cfg.metric),
                   "miou": num(fold_miou[i]), "iou": dict(zip(names, map(num, per_fold[i]), strict=True))}
                  for i in range(len(folds))],
        "fold_iou": {n: {"mean": num(np.nanmean(per_fold[:, c])), "std": num(np.nanstd(per_fold[:, c]))}
                     for c, n in enumerate(names)},
        "fold_miou": {"mean": num(float(np.mean(fold_miou))), "std": num(float(np.std(fold_miou)))},
        "oof": {"miou": num(oof.metrics["miou"]), "iou": {n: num(v) for n, v in oof.metrics["iou"].items()},
                "pixel_acc": num(oof.metrics["pixel_acc"]), "images": oof.metrics["images"]},
        "decision": decision.model_dump(mode="json"),
        "val": None if val is None else {"split": prep.cfg.val_split, "images": val.metrics["images"],
                                         "miou": num(val.metrics["miou"]),
                                         "iou": {n: num(v) for n, v in val.metrics["iou"].items()}},
    }


def format_cv(summary: dict[str, Any]) -> str:
    """The per-class table (fold mean +- spread, out-of-fold, val by the ensemble) and the per-fold line."""
    def num(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.4f}"

    names = list(summary["fold_iou"])
    width = max(12, *(len(n) for n in names))
    val = summary["val"]
    lines = [f"{'class':<{width}}  {'folds IoU (mean +- sd)':>22}  {'out-of-fold':>11}"
             + (f"  {'val (ensemble)':>14}" if val else "")]
    for n in names:
        spread = summary["fold_iou"][n]
        oof = summary["oof"]["iou"][n]
        lines.append(f"{n:<{width}}  {num(spread['mean']):>13} +- {num(spread['std'])}  {num(oof):>11}"
                     + (f"  {num(val['iou'][n]):>14}" if val else ""))
    fm = summary["fold_miou"]
    lines.append(f"{'mIoU':<{width}}  {num(fm['mean']):>13} +- {num(fm['std'])}  {num(summary['oof']['miou']):>11}"
                 + (f"  {num(val['miou']):>14}" if val else ""))
    lines.append("per fold mIoU   " + "  ".join(f"{f['fold']}: {num(f['miou'])}" for f in summary["folds"]))
    rule = summary["decision"]
    lines.append("decision rule   " + (f"class 1 where p > {rule['threshold']:.2f} ({rule['chosen_on']})"
                                       if rule.get("threshold") is not None else "argmax"))
    return "\n".join(lines)
