#!/usr/bin/env python3
"""unet-zoo command line: a thin layer over zoo, segdata and segengine.

Nothing heavy is imported at module level so that `--help` answers at once; each subcommand imports what it needs.
Errors meant for users carry `user_error = True` and are printed as one line (exit 2) instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys


def _add_plugin_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=None, metavar="MOD",
                   help="import a plugin module or .py file that registers encoders (repeatable)")


def _add_sliding_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sliding", "--tile", dest="sliding", action=argparse.BooleanOptionalAction, default=None,
                   help="sliding windows at native resolution (--no-sliding: letterbox); default: how the "
                        "checkpoint's recipe validated")
    p.add_argument("--tta", choices=("flip", "none"), default=None,
                   help="test-time augmentation: flip averages the softmax over the 4 flips of each window or "
                        "letterboxed image (4x the time); default: as the checkpoint's recipe validated")


def _add_label_flags(p: argparse.ArgumentParser) -> None:
    from segengine.config import LABEL_MODES

    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--label-mode", choices=LABEL_MODES, default=None)
    p.add_argument("--threshold", type=int, default=None)
    p.add_argument("--ignore-index", type=int, default=None)


def _add_device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="letterboxed images or sliding windows per forward pass (default 8)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16/fp16 autocast where the device computes it natively (CUDA, CPUs with AMX); "
                        "--no-amp: fp32")


def _add_run_mode_flags(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run NAME from its latest checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="delete the run NAME and start again")


def _add_training_flags(p: argparse.ArgumentParser, command: str) -> None:
    """--config, every flag the config schema declares (segengine.config.flag), plugins, --resume/--overwrite."""
    from segengine.config import cli_flags

    p.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="config file, or a shipped recipe by name (isbi, camvid, tutorial, default); flags override it")
    for option, kwargs in cli_flags(command):
        p.add_argument(option, **kwargs)
    _add_plugin_flag(p)
    _add_run_mode_flags(p)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unet-zoo")
    except PackageNotFoundError:  # a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from segengine.config import parse_duration

    parser = argparse.ArgumentParser(
        description="UNet segmentation model zoo, trained on Ray Train and tuned with Ray Tune.")
    parser.add_argument("--version", action="version", version=f"unet-zoo {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("encoders", help="list registered encoders")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard, e.g. 'res*' or 'timm-*'")
    _add_plugin_flag(p)

    data = sub.add_parser("data", help="dataset tools: check, fingerprint, synth, isbi")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = dsub.add_parser("check", help="report counts, sizes, class shares and every problem of a dataset")
    p.add_argument("root", metavar="DIR_OR_URI")
    _add_label_flags(p)
    p = dsub.add_parser("fingerprint", help="the training split's fingerprint in full: sizes, intensities, class "
                                            "shares, thickness and object sizes per class")
    p.add_argument("root", metavar="DIR_OR_URI")
    p.add_argument("--json", action="store_true", help="print it as JSON (as fingerprint.json in a planned run)")
    _add_label_flags(p)
    p = dsub.add_parser("synth", help="generate the built-in synthetic EM-like membrane dataset")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--size", type=int, default=None, help="image side in pixels")
    p = dsub.add_parser("isbi", help="convert the ISBI 2012 multi-page TIFF stacks to a dataset folder")
    p.add_argument("volume", metavar="VOLUME.tif")
    p.add_argument("labels", metavar="LABELS.tif")
    p.add_argument("out")
    p.add_argument("--val", type=int, default=5, help="last N sections go to the validation split")

    p = sub.add_parser(
        "train", help="data-parallel training on Ray Train",
        description="Train a UNet on Ray Train. --workers 0 runs in this process for debugging (checkpoints are "
                    "still written by the worker function; Ray's failure handling does not apply).")
    _add_training_flags(p, "train")
    p.add_argument("--fold", type=int, default=None, metavar="I",
                   help="with --folds K: train fold I only (0..K-1), e.g. one per machine; the summary follows "
                        "when all K have finished")
    p.add_argument("--probs", action="store_true",
                   help="with --folds K: keep the out-of-fold and val probabilities (oof/probs/, eval-val/probs/)")

    p = sub.add_parser("tune", help="hyperparameter search on Ray Tune (the main job)",
                       description="Search on Ray Tune. The defaults shown are the schema's; the search file's "
                                   "train: section (default: the shipped default.yaml) overrides them, and flags "
                                   "override both.")
    _add_training_flags(p, "tune")
    p.set_defaults(config=None)  # None = the shipped tune_configs/default.yaml
    p.add_argument("--samples", type=int, default=None, help="number of trials")
    p.add_argument("--workers-per-trial", type=int, default=None)
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: from resources)")

    p = sub.add_parser("plan", help="a recipe planned from the data, the resources and a time budget",
                       description="Fingerprint the training split, read the resources (this machine, or the cluster "
                                   "at --address), time real steps, and write a recipe file that `train --config` and "
                                   "`tune --config` run. `train --data DIR` and `tune --data DIR` without --config do "
                                   "this themselves.")
    p.add_argument("--data", required=True, metavar="DIR_OR_URI")
    p.add_argument("--budget", dest="budget_s", type=parse_duration, default=None, metavar="DURATION",
                   help="wall-clock budget of one training run, e.g. 20m or 2h (default 15m; a search around the "
                        "recipe gets twice that)")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: from the resources)")
    p.add_argument("--address", default=None, help="plan for the Ray cluster at ADDRESS (default: this machine)")
    p.add_argument("--out", default="plan.yaml", metavar="FILE.yaml")
    _add_label_flags(p)
    _add_plugin_flag(p)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a dataset split")
    p.add_argument("checkpoint", help="checkpoint, run or search folder, or an exported .onnx file")
    p.add_argument("--data", required=True, metavar="DIR_OR_URI")
    p.add_argument("--split", default="val", help="val, test, train or a split FILE")
    p.add_argument("--workers", type=int, default=1, help=">1: a pool of N Ray Data predictor actors")
    p.add_argument("--out", default=None, help="folder for JSON/CSV/PNG (default: next to the checkpoint)")
    p.add_argument("--probs", action="store_true",
                   help="also keep each image's class probabilities: OUT/probs/NAME.npy, float16 C x H x W")
    p.add_argument("--address", default=None)
    _add_sliding_flag(p)
    _add_device_flags(p)
    _add_plugin_flag(p)

    p = sub.add_parser("predict", help="masks, colour masks and overlays for images")
    p.add_argument("checkpoint", help="checkpoint, run or search folder, or an exported .onnx file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or globs")
    p.add_argument("--out", required=True)
    _add_sliding_flag(p)
    p.add_argument("--overlap", type=float, default=None, help="window overlap (default: the recipe's, or 0.25)")
    p.add_argument("--counts", action="store_true", help="also write per-class pixel counts (CSV)")
    p.add_argument("--probs", action="store_true",
                   help="also write each image's class probabilities: NAME_probs.npy, float16 C x H x W")
    p.add_argument("--workers", type=int, default=1, help=">1: a pool of N Ray Data predictor actors")
    p.add_argument("--address", default=None, help="Ray cluster for --workers (default: $RAY_ADDRESS, else local)")
    _add_device_flags(p)
    _add_plugin_flag(p)

    p = sub.add_parser("report", help="one self-contained HTML page of a run, search or folds run",
                       description="Write REPORT.html for a training run (curves, per-class IoU, confusion, worst and "
                                   "best validation images, previews, recipe, timings), a search (sortable trials "
                                   "table, searched values against the metric, the scheduler's decisions, the best "
                                   "trial's page) or a folds run (per fold, out-of-fold). Images are embedded: it "
                                   "opens offline. train and tune write it at their end.")
    p.add_argument("folder", metavar="RUN_OR_SEARCH")
    p.add_argument("--out", default=None, metavar="FILE.html", help="default: FOLDER/report.html")
    _add_plugin_flag(p)

    p = sub.add_parser("serve", help="an HTTP endpoint and a page for a model, on Ray Serve",
                       description="Serve MODEL (anything predict takes) until Ctrl-C: POST /v1/segment with an "
                                   "image returns its mask (?output=mask|color|overlay|json|probs), GET /v1/model "
                                   "describes the model, / is a page to try it. Loopback only unless --host says "
                                   "otherwise, which needs --token-file.")
    p.add_argument("model", metavar="MODEL", help="checkpoint, run, search or folds folder, A,B,C, or an .onnx file")
    p.add_argument("--address", default=None, help="Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    count = p.add_mutually_exclusive_group()
    count.add_argument("--replicas", type=int, default=1, metavar="N", help="model replicas (default 1)")
    count.add_argument("--autoscale", type=int, nargs=2, metavar=("MIN", "MAX"),
                       help="Serve's autoscaling between MIN and MAX replicas")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, metavar="N",
                   help="CPUs each replica reserves, and its torch threads (default 1)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=4, metavar="N", help="requests batched per forward pass")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="bearer token clients must send (required for a --host beyond loopback)")
    p.add_argument("--max-bytes", type=int, default=32 * 2**20, metavar="N", help="request body limit (32 MiB)")
    p.add_argument("--max-pixels", type=int, default=16 * 2**20, metavar="N",
                   help="image size limit, checked from the header before decoding (16 Mpx)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="seconds until a request gets a 503")
    p.add_argument("--max-queued", type=int, default=64, metavar="N",
                   help="requests waiting for the model beyond those in progress; more get a 503 at once")
    p.add_argument("--device", default="auto", help="auto (a GPU per replica when the cluster has them), cpu")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16/fp16 autocast where the device computes it natively; --no-amp: fp32")
    _add_plugin_flag(p)

    p = sub.add_parser("export", help="export a checkpoint to ONNX, TorchScript or safetensors")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=["onnx", "torchscript", "safetensors"], default="onnx",
                   help="safetensors: the weights, with the manifest in the header and in NAME.json beside them")
    p.add_argument("--out", required=True)
    _add_plugin_flag(p)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "encoders":
        from segengine.commands import encoders
        return encoders(args)
    if args.command == "data":
        from segdata import commands
        return getattr(commands, args.data_command)(args)
    from segengine import commands
    return getattr(commands, args.command)(args)


def _one_line_warnings() -> None:
    """Warnings meant for users print as `warning: message` on stderr, each once per run (not with file:line and
    the source line that raised it)."""
    import warnings

    warnings.formatwarning = lambda message, category, filename, lineno, line=None: f"warning: {message}\n"
    warnings.simplefilter("once", UserWarning)


def _respect_no_color() -> None:
    """Ray's prefixes of worker lines ("(RayTrainWorker pid=...)") in colour only on a terminal, and never with
    NO_COLOR (https://no-color.org): output redirected to a file or a pipe carries no escape codes."""
    import os

    if os.environ.get("NO_COLOR") or not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _one_line_warnings()
    _respect_no_color()
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user errors become one line; real bugs keep their traceback
        if getattr(exc, "user_error", False):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
