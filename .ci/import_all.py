"""Import every module of the package (run with only requirements.txt installed): a module that needs a
package the README's install line does not give fails here, by name."""

import importlib
import os
import pkgutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import liteframe_jax  # noqa: E402

failed = []
names = sorted(m.name for m in pkgutil.walk_packages(liteframe_jax.__path__, "liteframe_jax."))
for name in names:
    try:
        importlib.import_module(name)
    except Exception as e:  # report every failure, not only the first
        failed.append(f"{name}: {type(e).__name__}: {e}")
print(f"imported {len(names) - len(failed)} of {len(names)} modules of liteframe_jax")
if failed:
    print("\n".join(failed))
    sys.exit(1)
