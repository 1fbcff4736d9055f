"""`hack/build-images [NAME...]`: build the images whose inputs changed; see --help."""

from __future__ import annotations

import argparse
import json

from images.build import images_dir
from images.recipes import all_recipes, build_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/build-images",
        description="Build the project's container images as OCI archives (no Docker, no registry) into"
        " <cache>/images/<name>.tar; an image is rebuilt only when the hash of its inputs changed.",
    )
    parser.add_argument("names", nargs="*", help="images to build (default: all)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    parser.add_argument("--list", action="store_true", help="print the image names and exit")
    parser.add_argument("--print-dir", action="store_true", help="print the output directory and exit")
    args = parser.parse_args(argv)
    if args.list:
        for recipe in all_recipes(0):
            print(recipe.name)
        return 0
    if args.print_dir:
        print(images_dir())
        return 0
    catalog = build_all(args.names or None, force=args.force)
    print(
        json.dumps({name: record["reference"] for name, record in sorted(catalog.records.items())}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
