"""A plan: the dataset's fingerprint, the resources and a probe of real steps turned into a recipe file of the same
schema as `tune_configs/*.yaml` (a `train:` section sized to the budget, and the search around it), every key with
a comment naming the fact behind it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import yaml

import plugins
import segdata
import zoo
from segdata.fingerprint import Fingerprint, fingerprint
from segdata.resolve import cache_dir
from segengine import storage
from segengine.config import TrainConfig, format_duration
from segengine.planning import rules
from segengine.planning.probe import ProbeResult, cached_probe
from segengine.planning.resources import cluster_resources, local_resources
from segengine.search_config import SearchConfig

DEFAULT_BUDGET_S = 900.0  # train --data DIR without --budget: 15 minutes (a search: twice that)
PLAN_FILE = "plan.yaml"
FINGERPRINT_FILE = "fingerprint.json"
PROBE_STEPS = 6
# keys of the user's config that a plan keeps as they are: what the data is, how its labels read, the run
CARRIED = ("data", "num_classes", "label_mode", "threshold", "ignore_index", "val_fraction", "train_split",
           "val_split", "skip_bad", "seed", "plugins", "storage", "tracking")


@dataclass
class Plan:
    """What the planner measured and decided: the recipe (`config`, a whole search file) and each key's reason."""

    fingerprint: Fingerprint
    resources: rules.Resources
    probe: ProbeResult
    budget_s: float
    written: dict[str, Any]  # the train section's keys the plan sets (and those carried from the user's flags)
    config: SearchConfig  # the recipe and the search around it, validated
    decisions: list[rules.Decision]
    seconds: float  # fingerprint + rules + probe

    def save(self, run_dir: str) -> None:
        """plan.yaml (the recipe with its reasons) and fingerprint.json into a run or search folder."""
        storage.write_bytes(storage.join(run_dir, PLAN_FILE), self.to_yaml().encode())
        storage.write_bytes(storage.join(run_dir, FINGERPRINT_FILE),
                            json.dumps(self.fingerprint.to_dict(), indent=1).encode())

    def to_yaml(self) -> str:
        """The recipe file, a comment above each planned key saying why."""
        fp, res = self.fingerprint, self.resources
        reasons = {d.key: d.reason for d in self.decisions}
        h, w = fp.median_size
        lines = [f"# Planned by `launch.py plan` on {time.strftime('%Y-%m-%d')} for {fp.root}",
                 f"# fingerprint {fp.digest}: {fp.images} training images, median {w}x{h}, {fp.channels} channel(s); "
                 f"resources: {res.cpus} CPU(s), {res.gpus} GPU(s) on {res.where}, "
                 f"{'bf16' if res.bf16 else 'fp32'}",
                 f"# probe: {self.probe.encoder} {self.probe.crop[0]}x{self.probe.crop[1]} batch {self.probe.batch}: "
                 f"{self.probe.step_s:.3f} s/step, {self.probe.val_image_s:.2f} s per validation image, on "
                 f"{self.probe.threads} thread(s), {self.probe.precision}",
                 "#   python launch.py train --config plan.yaml    (this recipe, within "
                 f"{format_duration(self.budget_s)})",
                 f"#   python launch.py tune --config plan.yaml     (the search around it, within "
                 f"{format_duration(self.config.time_budget_s or 0)})",
                 "train:"]
        for key, value in self.written.items():
            if key in reasons:
                lines.append(f"  # {reasons[key]}")
            lines.append("  " + _flow(key, value))
        for key, value in self.config.search_sections().items():
            if key in reasons:
                lines.append(f"# {reasons[key]}")
            lines.append(_flow(key, value))
        return "\n".join(lines) + "\n"

    def table(self) -> str:
        """The plan in a few lines: each decision, its value and (shortened) why."""
        fp = self.fingerprint
        h, w = fp.median_size
        head = (f"plan       {fp.images} training images {w}x{h}, {fp.channels} channel(s); "
                f"{self.resources.cpus} CPU(s) {self.resources.gpus} GPU(s) on {self.resources.where}; budget "
                f"{format_duration(self.budget_s)}; planned in {self.seconds:.1f} s (fingerprint "
                f"{'cached' if fp.cached else f'{fp.seconds:.1f} s'}, probe "
                f"{'cached' if self.probe.cached else f'{self.probe.seconds:.1f} s'})")
        shown = [d for d in self.decisions if d.key in SHOWN]
        width = max(len(d.key) for d in shown)
        rows = [f"  {d.key:<{width}}  {_short(d.value):<22} {d.reason}" for d in shown]
        return "\n".join([head, *rows])


SHOWN = ("resample", "input_size", "encoder", "workers", "batch_size", "normalization", "augment", "class_aware",
         "class_weight_exponent", "val_window", "epochs", "val_every", "samples_per_epoch")


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}" for k in list(value)[:3]) + (", ...}" if len(value) > 3 else "}")
    if isinstance(value, list):
        return "x".join(map(str, value)) if len(value) == 2 and all(isinstance(v, int) for v in value) else str(value)
    return str(value)


def _flow(key: str, value: Any) -> str:
    return yaml.safe_dump({key: value}, default_flow_style=True, width=10_000, sort_keys=False).strip()[1:-1]


def _probe_config(draft: rules.Draft, base: TrainConfig) -> TrainConfig:
    """The candidate recipe as the probe runs it: the user's settings, the plan's keys, a short epoch."""
    return TrainConfig.from_dict({**base.to_dict(), **draft.train, "samples_per_epoch": 64, "epochs": 1},
                                 where="plan")


def make_plan(base: TrainConfig, *, budget_s: float, workers: int | None = None, address: str | None = None
              ) -> Plan:
    """Fingerprint the training split of `base.data` (cached), read the resources, decide what the data decides,
    probe those settings, size the run to `budget_s`; `base` supplies the data, label and run settings."""
    start = time.perf_counter()
    plugins.autoload()
    plugins.load_plugins(base.plugins)
    root = segdata.resolve_data(base.data)
    folder = segdata.open_dataset(root, num_classes=base.num_classes, label_mode=base.label_mode,
                                  threshold=base.threshold, ignore_index=base.ignore_index,
                                  val_fraction=base.val_fraction)
    train = segdata.validated_samples(folder, base.train_split, base.skip_bad)
    val = folder.samples(base.val_split) or train
    fp = fingerprint(train, folder.meta)
    resources = cluster_resources(address) if address else local_resources()
    multiple = zoo.get_spec(rules.ENCODER).input_multiple
    draft = rules.data_rules(fp, resources, workers, multiple)
    cfg = _probe_config(draft, base)
    threads = draft.train["cpus_per_worker"]
    measured = cached_probe(cfg, train, val[0], folder.meta, threads=threads, dataset_digest=fp.digest,
                            cache_dir=cache_dir(), steps=PROBE_STEPS)
    per_node = max(1, draft.train["workers"] // max(1, resources.nodes))
    slowdown = rules.PARALLEL_SLOWDOWN if per_node > 1 and not resources.gpus else 1.0
    timing = rules.Timing(measured.step_s * slowdown, measured.val_image_s * slowdown, len(val),
                          draft.train["workers"])
    timing = rules.afford_crop(fp, draft, timing, budget_s, multiple, resources)
    rules.time_rules(draft, timing, budget_s)
    concurrent = max(1, resources.cpus // max(1, draft.train["workers"] * draft.train["cpus_per_worker"]))
    search, search_decisions = rules.search_rules(draft, budget_s, concurrent)
    defaults = TrainConfig().to_dict()
    carried = {k: v for k, v in base.to_dict().items() if k in CARRIED and v != defaults[k] and k != "storage"}
    written = {**carried, "data": root, **draft.train}
    config = SearchConfig.parse({"train": written, **search}, "plan")
    return Plan(fp, resources, measured, budget_s, written, config, draft.decisions + search_decisions,
                time.perf_counter() - start)
