"""`python -m cli` runs the `edvex` command line."""

from .main import main

main()
