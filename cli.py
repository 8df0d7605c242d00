"""prune-lit command line.

``python cli.py fit|validate|test --config configs/<experiment>.yaml`` (LightningCLI, `prune_lit.cli_main`) and
``python cli.py restrain|inspect --original DIR --edited DIR ...`` (PRUNE for any edited checkpoint, `prune_lit.commands`).
"""

import sys

from prune_lit.cli_main import main
from prune_lit.commands import COMMANDS, main as posthoc_main

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        posthoc_main(sys.argv[1:])
    else:
        main()
