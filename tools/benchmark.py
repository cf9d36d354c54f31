"""Performance report for fiber_det components (a report, not a test).

    python tools/benchmark.py trunk [--models tiny fiber-b] [--sizes 384x384 800x1344] ...

Each subcommand is one function registered with `@subcommand(name, help, arguments)`; adding
one (e.g. `coarse`) means adding one decorated function. Every measurement runs in a fresh
child process so that peak memory (CPU: the child's peak RSS, ru_maxrss, weights included;
GPU: torch's max_memory_allocated) belongs to that case alone. Every process keeps freed memory
for reuse as fiber_det's tools do (fiber_det/runtime.py; FIBER_DET_KEEP_FREED_MEMORY=0 measures
glibc's default). `targets` runs the cases of
issue 17's targets and prints each figure with its ratio.
"""

import argparse

import benchmark_coarse  # noqa: F401  (registers coarse, caption, retrieval)
import benchmark_export  # noqa: F401  (registers export)
import benchmark_fine  # noqa: F401  (registers trunk, detector)
import benchmark_gpu  # noqa: F401  (registers gpu)
import benchmark_head  # noqa: F401  (registers deform-conv, head)
import benchmark_targets  # noqa: F401  (registers targets)
from benchmark_common import SUBCOMMANDS

from fiber_det.runtime import keep_freed_memory


def main() -> None:
    keep_freed_memory()  # as fiber_det's tools run (FIBER_DET_KEEP_FREED_MEMORY=0: glibc's default)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (function, help_text, arguments) in SUBCOMMANDS.items():
        command = commands.add_parser(name, help=help_text)
        for flags, options in arguments:
            command.add_argument(*flags, **options)
        command.set_defaults(function=function)
    args = parser.parse_args()
    args.function(args)


if __name__ == "__main__":
    main()
