"""Multimodal product search: the plain logic the pipeline, the command line and the server share."""

import os
import warnings

# OpenMP workers (torch's intra-op threads, FAISS: libgomp) spin only briefly before they sleep
# between parallel regions. On 2 cores shared with other work, spinning workers take the cores
# from the work they wait for: 60 fusion-model steps took 204-248 s wall at load 6 with libgomp's
# default spinning, 20.7 s with 2,000 spins, 20.3 s never spinning. On idle cores 2,000 spins
# cost nothing (9.3-10.0 s, as the default) where never spinning did (11.5-12.2 s). The weights
# are bit-identical. Read when torch loads libgomp, so set before any import of torch; an
# explicit OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "2000")

# urllib3 warns, when its SOCKS module is imported, that SOCKS proxies would need PySocks.
# requests silences that warning, but only when requests is imported first; with another import
# order (Dagster, Ray, worker processes) it reached the top of `mmsearch run`'s output. Nothing
# here uses a SOCKS proxy. Matched by message, so this import of the package loads no urllib3.
warnings.filterwarnings("ignore", message="SOCKS support in urllib3", category=Warning)
