"""prune-lit command line: ``python cli.py fit|validate|test --config configs/<experiment>.yaml``."""

from prune_lit.cli_main import main

if __name__ == "__main__":
    main()
