"""Multimodal product search: the plain logic the pipeline, the command line and the server share."""

import os

# OpenMP workers (torch's intra-op threads, FAISS: libgomp) spin only briefly before they sleep
# between parallel regions. On 2 cores shared with other work, spinning workers take the cores
# from the work they wait for: 60 fusion-model steps took 204-248 s wall at load 6 with libgomp's
# default spinning, 20.7 s with 2,000 spins, 20.3 s never spinning. On idle cores 2,000 spins
# cost nothing (9.3-10.0 s, as the default) where never spinning did (11.5-12.2 s). The weights
# are bit-identical. Read when torch loads libgomp, so set before any import of torch; an
# explicit OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "2000")
