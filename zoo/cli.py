"""The ``zoo`` command line: list | run | report | predict | data | weights | speed."""
from __future__ import annotations

import argparse
import json
import sys


def cmd_list(args) -> int:
    from zoo.backbones import BACKBONES
    from zoo.heads import HEADS

    if args.what == "backbones":
        for name in BACKBONES.list(args.pattern):
            spec = BACKBONES.get(name)
            if args.long:
                print(json.dumps(spec.describe()))
            else:
                print(f"{name}\t{spec.family}\tpreprocessing={spec.preprocessing}\tsize={spec.default_size}"
                      f"\timagenet={'yes' if spec.has_imagenet_weights else 'no'}")
    elif args.what == "heads":
        for name in HEADS.list(args.pattern):
            head = HEADS.get(name)
            print(f"{name}\t{head.task}\t{head.description}")
    else:
        from zoo.data import DATASETS

        for name in DATASETS.list(args.pattern):
            card = DATASETS.get(name)
            print(f"{name}\t{card['task']}\t{card.get('source', '')}\t{len(card.get('class_names', []))} classes")
    return 0


def cmd_weights(args) -> int:
    from pathlib import Path

    from zoo.backbones import BACKBONES
    from zoo.weights import WeightsUnavailableError, download_weights, file_matches_hash

    dest = Path(args.dest).expanduser()
    failures = 0
    for name in BACKBONES.list(args.pattern):
        spec = BACKBONES.get(name)
        files = [spec.imagenet_no_top] + ([spec.imagenet_top] if args.include_top else [])
        for weights in filter(None, files):
            target = dest / weights.file_name
            if target.is_file() and file_matches_hash(target, weights.file_hash):
                print(f"ok\t{name}\t{target} (already there)")
                continue
            try:
                print(f"ok\t{name}\t{download_weights(weights, dest)}")
            except Exception as error:
                failures += 1
                print(f"failed\t{name}\t{weights.url}\t{type(error).__name__}: {error}", file=sys.stderr)
    if failures:
        print(f"{failures} file(s) could not be fetched; nothing partial was left in {dest}", file=sys.stderr)
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="list registered backbones, heads or datasets")
    listing.add_argument("what", choices=["backbones", "heads", "datasets"])
    listing.add_argument("pattern", nargs="?", default="*", help="glob pattern, e.g. 'resnet*'")
    listing.add_argument("--long", action="store_true", help="all metadata, one JSON object per line")
    listing.set_defaults(func=cmd_list)

    weights = commands.add_parser("weights", help="pretrained weights for offline machines")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    fetch = weights_commands.add_parser("fetch", help="download and hash-check ImageNet weight files")
    fetch.add_argument("pattern", nargs="?", default="*")
    fetch.add_argument("--dest", required=True, help="folder to put the files in (then set ZOO_WEIGHTS_DIR to it)")
    fetch.add_argument("--include-top", action="store_true", help="also the files with the ImageNet classifier")
    fetch.set_defaults(func=cmd_weights)

    from zoo.data.commands import add_data_commands

    add_data_commands(commands)

    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        from zoo.errors import USER_ERRORS

        if isinstance(error, USER_ERRORS):
            print(f"zoo: error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
