"""``python -m src.claims <study dir>``: the study's claims on one page (see ``src.analysis.claims``)."""

import sys

from src.analysis.claims import main

if __name__ == "__main__":
    sys.exit(main())
