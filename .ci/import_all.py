"""Import every module of the package (run with only requirements.txt installed): a module that needs a
package the README's install line does not give fails here, by name. The one exception is the `pytorch`
room, the exported models' PyTorch side, which is installed where they are used (requirements-pytorch.txt:
torch, transformers) and never imports JAX; it is imported when torch is there, and counted as left out
otherwise. Its lmms-eval model is imported where lmms-eval is installed too."""

import importlib
import importlib.util
import os
import pkgutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import liteframe_jax  # noqa: E402

failed, left_out = [], []
names = sorted(m.name for m in pkgutil.walk_packages(liteframe_jax.__path__, "liteframe_jax."))
has_torch = importlib.util.find_spec("torch") is not None
has_lmms_eval = importlib.util.find_spec("lmms_eval") is not None
for name in names:
    if name.startswith("liteframe_jax.pytorch") and not has_torch or \
            name == "liteframe_jax.pytorch.lmms_eval_model" and not has_lmms_eval:
        left_out.append(name)
        continue
    try:
        importlib.import_module(name)
    except Exception as e:  # report every failure, not only the first
        failed.append(f"{name}: {type(e).__name__}: {e}")
print(f"imported {len(names) - len(failed) - len(left_out)} of {len(names)} modules of liteframe_jax"
      + (f" ({len(left_out)} of the pytorch room left out: they need requirements-pytorch.txt, the lmms-eval model "
         "lmms-eval)" if left_out else ""))
if failed:
    print("\n".join(failed))
    sys.exit(1)
