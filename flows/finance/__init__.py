"""What the finance notebooks use: the marts (read-only, one query per call), evidence files, money text.

The notebooks in ``notebooks/`` read the warehouse only through this package (``from flows import finance``):

* :class:`Warehouse` (``marts.py``) opens the DuckDB file **read-only** for one query on one of the
  documented marts (:data:`MARTS`) and closes it before returning, so a notebook left open never holds
  the file. While the nightly run writes, DuckDB refuses the read-only open (a conflicting lock); the
  call retries briefly, then raises :class:`WarehouseBusy` ("try again in a moment").
* Money comes back exact (``money.py``): ``*_fen`` / ``*_millifen`` columns are ``Int64`` (nullable
  int64) and :func:`yuan` turns fen into a :class:`~decimal.Decimal`; nothing goes through ``float``
  except chart geometry (:func:`yuan_axis` labels fen ticks in yuan, ``charts.py``).
* Payer identifiers (openid and the like) are masked in every frame, bill line and log line this
  package returns (:func:`mask_text`, :func:`mask_frame`; ``masking.py``).
* Evidence (``evidence.py``): :func:`read_bill_line` reads one line of an archived bill
  (``flows/archive.py`` layout), :func:`read_notification_line` the non-secret envelope of one
  notification-log line (``flows/notifications/log.py``); the verification result comes from the marts, never
  from decrypting (notebooks do not hold the APIv3 key).
* :func:`explain` says what each exception class means, in Chinese and English (``explanations.py``).
* :class:`Workbench` (``actions.py``) resolves, assigns and reopens exceptions: a preview of what will change,
  then a confirmation that writes it in one short transaction (the same code as ``wxrecon exceptions``).
* Everything raised is a :class:`FinanceError` (``errors.py``).

Relative paths (the defaults ``var/warehouse.duckdb``, ``var/archive``, ``var/notifications``,
``build/notebook-charts``) are relative to the project root, wherever the notebook runs (``paths.py``).
"""

from __future__ import annotations

from flows.finance.actions import RESOLUTIONS, Preview, Workbench
from flows.finance.charts import save_chart, use_cjk_font, yuan_axis
from flows.finance.errors import (
    ActionRefused,
    EvidenceNotFound,
    FinanceError,
    MartNotAllowed,
    MartNotBuilt,
    WarehouseBusy,
    WarehouseMissing,
)
from flows.finance.evidence import (
    BillLine,
    NotificationLine,
    read_bill_line,
    read_notification_line,
    verification_status,
)
from flows.finance.explanations import EXPLANATIONS, Explanation, class_label, explain
from flows.finance.marts import MARTS, Warehouse
from flows.finance.masking import mask_frame, mask_id, mask_text
from flows.finance.money import fmt_fee, fmt_rate, fmt_yuan, for_display, parse_rate, yuan
from flows.finance.paths import (
    DEFAULT_ARCHIVE,
    DEFAULT_CHARTS,
    DEFAULT_NOTIFICATIONS,
    DEFAULT_WAREHOUSE,
    PROJECT_ROOT,
    project_path,
)

__all__ = [
    "DEFAULT_ARCHIVE",
    "DEFAULT_CHARTS",
    "DEFAULT_NOTIFICATIONS",
    "DEFAULT_WAREHOUSE",
    "EXPLANATIONS",
    "MARTS",
    "PROJECT_ROOT",
    "RESOLUTIONS",
    "ActionRefused",
    "BillLine",
    "EvidenceNotFound",
    "Explanation",
    "FinanceError",
    "MartNotAllowed",
    "MartNotBuilt",
    "NotificationLine",
    "Preview",
    "Warehouse",
    "WarehouseBusy",
    "WarehouseMissing",
    "Workbench",
    "class_label",
    "explain",
    "fmt_fee",
    "fmt_rate",
    "fmt_yuan",
    "for_display",
    "mask_frame",
    "mask_id",
    "mask_text",
    "parse_rate",
    "project_path",
    "read_bill_line",
    "read_notification_line",
    "save_chart",
    "use_cjk_font",
    "verification_status",
    "yuan",
    "yuan_axis",
]
