import sys

from threeregime.cli import main

sys.exit(main())
