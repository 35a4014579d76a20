"""Mining: score every unlabeled frame with a model and pick the ones worth labeling.

- :mod:`.strategies` the scoring strategies, their registry and user plugins (built on
  :mod:`.strategy_base`; the built-in ones are in :mod:`.builtin_strategies`, those fitted to the
  labeled frames in :mod:`.targeted_strategies`);
- :mod:`.scoring` one scene's frames through the model and the strategies (a :class:`SceneJob`);
- :mod:`.selection` the picks from the scores (weights, quotas, diversity);
- :mod:`.mine` a mining run over the catalog, resumable, on local worker processes;
- :mod:`.ray_engine` the same scene jobs on a Ray cluster.
"""
