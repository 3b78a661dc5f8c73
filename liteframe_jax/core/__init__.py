"""The ground floor: mesh and sharding rules, tree helpers, console log, checkpoints and the run-folder layout,
configs by name. Nothing here knows of models, data or training."""
