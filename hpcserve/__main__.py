import sys

from hpcserve.cli import main

sys.exit(main())
