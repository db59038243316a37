import sys

from diffem.cli import main

sys.exit(main())
