"""`python -m inference.wsi`: predict whole slides or a cohort (inference.wsi.predict, inference.wsi.cohort)."""

import sys

from inference.wsi.cli import main

if __name__ == "__main__":
    sys.exit(main())
