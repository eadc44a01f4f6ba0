"""``python -m src.report <sweep dir>``: the tables and plots of a sweep (see ``src.analysis.report``)."""

import sys

from src.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
