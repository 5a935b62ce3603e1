"""The compose stack's images: how long a build takes and how big they are.

Times each step of `scripts/compose_stack.py build` as `make compose-up` runs it: the local Debian base
(debootstrap + docker import, only where Docker Hub can't be reached) and each image of the cpu
profile, then prints every image's size. `--cold` first removes the base, the lfi images and their
build stages (every image labelled lfi.project=lfi: Docker's layer cache for these builds), as on a
fresh machine; without it the numbers are a
rebuild with nothing changed.

    python bench/compose_build.py [--cold]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import compose_stack as stack


def _size_mb(image: str) -> float:
    return int(stack.docker("image", "inspect", "-f", "{{.Size}}", image).stdout) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="remove the base and the images first")
    parser.add_argument("--project", default="lfi-bench")
    args = parser.parse_args()
    stack.ensure_engine()
    env = stack.compose_env(args.project)
    images = list(stack.profile_builds(env))
    if args.cold:
        # the tagged images, then everything they were built from (build stages, the base): no layer cache left
        stack.docker("rmi", "-f", *images, check=False)
        stack.docker("image", "prune", "-a", "-f", "--filter", f"label={stack.PROJECT_LABEL}")
        stack.docker("rmi", "-f", stack.LOCAL_BASE, check=False)
    rows = []
    started = time.monotonic()
    bases = stack.base_images()
    rows.append(("base images " + " + ".join(sorted(set(bases.values()))), time.monotonic() - started))
    env = stack.compose_env(args.project, bases)
    stack.fill_wheelhouse()
    for image, build in stack.profile_builds(env).items():
        one = time.monotonic()
        stack.build_image(env, image, build)
        rows.append((f"image {image}", time.monotonic() - one))
    total = time.monotonic() - started
    print(f"\n{'cold' if args.cold else 'warm'} build, cpu profile\n")
    print(f"| {'step':<44} | {'seconds':>8} |")
    print(f"|{'-' * 46}|{'-' * 10}|")
    for name, seconds in [*rows, ("total", total)]:
        print(f"| {name:<44} | {seconds:>8.0f} |")
    print(f"\n| {'image':<28} | {'size MB':>8} |")
    print(f"|{'-' * 30}|{'-' * 10}|")
    for image in sorted({*bases.values(), *images}):
        print(f"| {image:<28} | {_size_mb(image):>8.0f} |")


if __name__ == "__main__":
    main()
