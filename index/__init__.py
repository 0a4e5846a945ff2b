"""What mmkb knows: the entity store, embedders, FAISS vector indexes, ingest and the starter KB."""
import os

# OpenMP threads that busy-wait lose their core whenever anything else runs, which made 2-thread
# inference ~30x slower on 2 shared cores (measured); passive waiting avoids it. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
