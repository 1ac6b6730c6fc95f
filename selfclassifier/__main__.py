import sys

from selfclassifier.cli import main

sys.exit(main())
