"""`launch.py data ...`: check, fingerprint, synth, isbi. Each returns the process exit code."""

from __future__ import annotations

import argparse
import json
import warnings

from segdata import synth as synth_module
from segdata.check import check_dataset, validated_samples
from segdata.fingerprint import fingerprint as measure
from segdata.folder import SegFolder, open_dataset
from segdata.isbi import convert
from segdata.resolve import resolve_data


def _folder(args: argparse.Namespace) -> SegFolder:
    return open_dataset(resolve_data(args.root), num_classes=args.num_classes, label_mode=args.label_mode,
                        threshold=args.threshold, ignore_index=args.ignore_index)


def check(args: argparse.Namespace) -> int:
    """Print the report (and, for a sound dataset, its fingerprint's summary); 0 when the dataset is fine, 1 when
    problems were found."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = _folder(args)
        report = check_dataset(folder)
    for warning in caught:  # what was inferred is already in the report; show anything else once, briefly
        if not any(note in str(warning.message) for note in report.meta.inferred):
            print(f"warning: {warning.message}")
    print(report.format())
    if report.ok and report.counts.get("train"):
        print("\n".join(measure(folder.samples("train"), folder.meta).summary()))
    return 0 if report.ok else 1


def fingerprint(args: argparse.Namespace) -> int:
    """The training split's fingerprint in full (or as JSON); the split is checked first."""
    folder = _folder(args)
    found = measure(validated_samples(folder, "train", skip_bad=False), folder.meta)
    print(json.dumps(found.to_dict(), indent=1) if args.json else found.format())
    return 0


def synth(args: argparse.Namespace) -> int:
    given = {"n_train": args.n_train, "n_val": args.n_val, "size": args.size}
    params = {**synth_module.DEFAULTS, "seed": args.seed, **{k: v for k, v in given.items() if v is not None}}
    out = synth_module.generate(args.out, **params)
    print(f"wrote the synthetic membrane set ({', '.join(f'{k}={v}' for k, v in params.items())}) to {out}")
    return 0


def isbi(args: argparse.Namespace) -> int:
    out = convert(args.volume, args.labels, args.out, val=args.val)
    print(f"wrote {out} (tutorial layout; last {args.val} sections are the validation split)")
    return 0
