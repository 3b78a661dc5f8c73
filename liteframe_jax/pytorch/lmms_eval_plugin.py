"""The `lmms_eval.models` entry point (pyproject.toml): lmms-eval's registry entry for `--model liteframe`, the
class in lmms_eval_model.py named by its path. A file of its own that imports nothing when loaded: lmms-eval
loads entry points while its `lmms_eval.models` package initialises, and the model's file imports lmms-eval
modules that import that package, so an entry point there would be a circle wherever the model's file is
imported first."""

MODEL_ID = "liteframe"
CLASS_PATH = "liteframe_jax.pytorch.lmms_eval_model.LiteFrameLmms"


def model_manifest():
    from lmms_eval.models.registry_v2 import ModelManifest
    return ModelManifest(model_id=MODEL_ID, chat_class_path=CLASS_PATH)
