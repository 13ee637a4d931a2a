"""Multimodal product search: the plain logic the pipeline, the command line and the server share."""

import os

# OpenMP workers (torch's intra-op threads, FAISS) sleep between parallel regions instead of
# spinning: on 2 cores shared with other work, 30 fusion-model steps cost 27-29 CPU s and
# 26-33 s wall spinning, 7.9-8.3 CPU s and 8-15 s wall passive, for bit-identical weights. Read
# when torch loads libgomp, so set before any import of torch; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
