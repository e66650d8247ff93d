import sys

from esper_tui.commands.cli import main

sys.exit(main())
