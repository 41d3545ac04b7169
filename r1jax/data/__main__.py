"""`python -m r1jax.data {prepare,show,toy_math} ...`: see `prepare`, `show` and `toy_math` for each command."""
import argparse
import sys

from r1jax.data import prepare, show, toy_math

COMMANDS = {"prepare": prepare, "show": show, "toy_math": toy_math}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m r1jax.data")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.__doc__.split("\n")[0],
                                            description=module.__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
