"""Batch jobs of `predict` and `evaluate`: in this process, or over a cluster with Ray Data (`--workers N`).

A job function of the calling module turns a batch of small rows (file paths, output names) into small result
rows (written or skipped, counts, confusion matrices). `map_items` runs it here, one batch at a time, or on Ray
Data: `map_batches` into a fixed pool of predictor actors (`ActorPoolStrategy(size=N)`), each of which rebuilds
the model once from the weights in the object store and reads its images from the paths (local files, a shared
folder or object storage). The driver gathers the result rows with one progress bar; images and masks never
travel through the object store. GPU actors when the cluster has GPUs and --device is not cpu, one CPU each
otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from segengine.inference.predictor import InferenceError, Predictor, progress_bar
from segengine.inference.shipping import ShippedPredictor, rebuild, ship

Batch = dict[str, np.ndarray]
Job = Callable[..., Batch]  # job(predictor, batch, **job_kwargs) -> rows, defined where it is used


class PredictorActor:
    """One Ray Data actor: a predictor (or an ensemble) rebuilt from the weights, then `job` on every batch it is
    given."""

    def __init__(self, shipped: ShippedPredictor, plugin_refs: list[str], options: dict[str, Any], job: Job,
                 job_kwargs: dict[str, Any]) -> None:
        import ray

        import plugins

        plugins.autoload()
        plugins.load_on_worker(plugin_refs)
        self.predictor = rebuild(shipped, options)
        self.job, self.job_kwargs = job, job_kwargs
        self.node = ray.util.get_node_ip_address()

    def __call__(self, batch: Batch) -> Batch:
        rows = self.job(self.predictor, batch, **self.job_kwargs)
        size = len(next(iter(rows.values())))
        return {**rows, "node": np.asarray([self.node] * size, dtype=object)}


ACTORS_START_S = 180  # the whole pool starts before the first batch (so every node takes a share), or an error


@contextmanager
def _ray_data_settings() -> Iterator[None]:
    """Our one progress bar instead of Ray Data's operator bars and its log lines (execution plan, "progress
    bars disabled"), and a pool that is complete before work starts. Ray 2.60's core worker still logs one line
    per actor pool, that the actors' constructor arguments live in the object store (Ray Data's own;
    ray-project/ray#53727)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    names = ("enable_progress_bars", "print_on_execution_start", "wait_for_min_actors_s")
    saved = {name: getattr(context, name) for name in names}
    logger = logging.getLogger("ray.data")
    level = logger.level
    context.enable_progress_bars, context.print_on_execution_start = False, False
    context.wait_for_min_actors_s = ACTORS_START_S
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        logger.setLevel(level)


def _user_error(exc: BaseException) -> BaseException | None:
    """The user_error exception (one line for the CLI) inside Ray Data's wrappers, if there is one."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if getattr(current, "user_error", False):
            return current
        stack.extend(e for e in (current.__cause__, current.__context__, getattr(current, "cause", None))
                     if isinstance(e, BaseException))
    return None


def actor_resources(device: str, workers: int) -> tuple[dict[str, float], str]:
    """(ray remote args per actor, the device its predictor uses): a GPU each when the cluster has GPUs and
    --device allows them, else one CPU; a pool the cluster cannot hold is refused at once."""
    from segengine.ray_adapter import ResourceError, cluster_capacity

    capacity = cluster_capacity()
    gpus, cpus = capacity["GPU"], capacity["CPU"]
    if device != "cpu" and gpus >= 1:
        if gpus < workers:
            raise ResourceError(f"--workers {workers}: one GPU per actor, and the cluster has {gpus:g}; use "
                                f"--workers {int(gpus)}, or --device cpu")
        return {"num_gpus": 1, "num_cpus": 0}, "cuda"
    if device not in ("auto", "cpu"):
        raise InferenceError(f"--device {device}: the Ray cluster has no GPU; use --device auto or cpu")
    if cpus < workers:
        raise ResourceError(f"--workers {workers}: one CPU per actor, and the cluster has {cpus:g}; use "
                            f"--workers {int(cpus)}")
    return {"num_cpus": 1}, "cpu"


def map_here(predictor: Predictor, items: Sequence[dict[str, Any]], job: Job, job_kwargs: dict[str, Any], *,
             desc: str, progress: bool) -> Iterator[dict[str, Any]]:
    """Rows that `job` returns for `items`, computed in this process one batch at a time."""
    bar = progress_bar(len(items), desc, enabled=progress)
    try:
        for start in range(0, len(items), predictor.batch_size):
            chunk = items[start:start + predictor.batch_size]
            rows = job(predictor, {k: np.asarray([item[k] for item in chunk], dtype=object) for k in chunk[0]},
                       **job_kwargs)
            bar.update(len(chunk))
            yield from ({k: v[i] for k, v in rows.items()} for i in range(len(chunk)))
    finally:
        bar.close()


def map_items(predictor: Predictor, items: Sequence[dict[str, Any]], job: Job, job_kwargs: dict[str, Any], *,
              workers: int, address: str | None, plugin_refs: Sequence[str], device: str, desc: str,
              progress: bool) -> Iterator[dict[str, Any]]:
    """`map_on_actors` for `workers` > 1, else `map_here`."""
    if workers > 1:
        return map_on_actors(predictor, items, job, job_kwargs, workers=workers, address=address,
                             plugin_refs=plugin_refs, device=device, desc=desc, progress=progress)
    return map_here(predictor, items, job, job_kwargs, desc=desc, progress=progress)


def map_on_actors(predictor: Predictor, items: Sequence[dict[str, Any]], job: Job, job_kwargs: dict[str, Any], *,
                  workers: int, address: str | None, plugin_refs: Sequence[str], device: str, desc: str,
                  progress: bool = True) -> Iterator[dict[str, Any]]:
    """Rows that `job` returns for `items`, computed by `workers` predictor actors on the cluster at `address`
    (or a Ray started here); yields them as they finish, with a progress bar. The first row carries the
    session's start-up time under `ray_start_s` (Ray started or joined, actors not yet)."""
    if any(member.model is None for member in predictor.members):
        raise InferenceError(f"--workers {workers} ships the checkpoint's weights to Ray actors; use --workers 1 "
                             "for an exported .onnx file, or its checkpoint")
    import ray
    from ray.data import ActorPoolStrategy

    import plugins
    from segengine.ray_adapter import ray_session

    refs = plugins.resolve_plugin_refs(list(plugin_refs))
    started = time.perf_counter()
    with _ray_data_settings(), ray_session(address, refs):
        remote_args, actor_device = actor_resources(device, workers)
        shipped = ship(predictor)
        options = {"amp": predictor.amp, "device": actor_device, "batch_size": predictor.batch_size}
        per_call = max(1, min(predictor.batch_size, len(items) // (workers * 4)))  # >= 4 calls per actor
        dataset = ray.data.from_items(list(items), override_num_blocks=-(-len(items) // per_call)).map_batches(
            PredictorActor, batch_size=per_call, batch_format="numpy",
            compute=ActorPoolStrategy(size=workers),
            fn_constructor_args=(shipped, refs, options, job, job_kwargs), **remote_args)
        ray_start_s = time.perf_counter() - started
        bar = progress_bar(len(items), f"{desc} ({workers} Ray Data actors, {actor_device})", enabled=progress)
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
                for i in range(len(batch["node"])):
                    bar.update(1)
                    row = {key: values[i] for key, values in batch.items()}
                    if ray_start_s is not None:
                        row["ray_start_s"] = ray_start_s
                        ray_start_s = None
                    yield row
        except Exception as exc:  # Ray Data wraps actor errors in its own types; a user error stays one line
            cause = _user_error(exc)
            if cause is not None:
                raise cause from None
            raise
        finally:
            bar.close()
