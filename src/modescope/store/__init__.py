"""The results store: experiment runs in SQLite (see store.py), and the records it keeps."""

from modescope.store.records import Artifact, Metric, ProbeOutput, RunInfo, StoredUnit, UnitRecord
from modescope.store.sqlite_failures import StoreWriteError
from modescope.store.store import Store

__all__ = ["Artifact", "Metric", "ProbeOutput", "RunInfo", "Store", "StoreWriteError", "StoredUnit", "UnitRecord"]
