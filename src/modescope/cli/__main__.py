"""`python -m modescope.cli`: the `modescope` command."""

from modescope.cli import main

if __name__ == "__main__":
    main()
