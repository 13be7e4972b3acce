"""Keep hypothesis out of the working directory.

Even with ``database=None`` (set on every test here), hypothesis caches data under
``.hypothesis/`` in the current directory; point it at a private temporary directory instead.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_HOME = tempfile.mkdtemp(prefix="ckptlib-hypothesis-")
atexit.register(shutil.rmtree, _HOME, True)
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", _HOME)

try:
    from hypothesis import configuration
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass
else:
    configuration.set_hypothesis_home_dir(os.environ["HYPOTHESIS_STORAGE_DIRECTORY"])
