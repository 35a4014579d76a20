"""Labeling in the data engine: from the relabel queue to labels, checked, and written as dataset versions.

Import the module you need; this package re-exports nothing.

- :mod:`.records`: the labels file format (nuScenes records), reading and parsing it, ``LabelsError``,
  the catalogued datasets labels refer to (``SourceDataset``), instance chains.
- :mod:`.validate`: labels checked against the catalog and the frames' datasets (``validate_labels``).
- :mod:`.autolabel`: queued frames labeled by the synthetic world's oracle (``label_frames``).
- :mod:`.inject`: known label errors planted for label-QA experiments (``inject_errors``).
- :mod:`.label_studio`: the Label Studio review contract, and reviewers' exports read into records.
- :mod:`.queue`: the relabel queue of a mining run (``write_queue``): manifest, review page, tasks.
- :mod:`.qa`: label QA measured, precision at k of a ranking at finding planted errors.
- :mod:`.builder`: a dataset version's tables assembled in memory (``VersionBuilder``).
- :mod:`.ingest`: a labels file validated, written as a new version and recorded (``ingest``).
- :mod:`.versions`: the version layout, finding a version and diffing two (``diff_versions``).
"""
