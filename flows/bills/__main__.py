"""``python -m flows.bills``: write the data checks generated from the bill column catalog
(:mod:`flows.bills.summaries`)."""

import sys

from flows.bills.summaries import write_checks

for path in write_checks():
    sys.stdout.write(f"wrote {path}\n")
