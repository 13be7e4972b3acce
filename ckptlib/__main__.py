import sys

from ckptlib.cli import main

sys.exit(main())
