"""The storage layer: every byte a run reads or writes goes through here.

It works the same on local paths, ``gs://`` and ``s3://`` (Beam's ``FileSystems`` underneath),
and it is, with ``tamis/pipeline``, the only place that imports Beam.

- ``tamis.io.filesystems``: paths and bytes on any Beam filesystem (literal paths, atomic writes,
  the run's Beam options handed over before the first read, one-line errors).
- ``tamis.io.files``: reading input files (literal paths versus globs, compressed streams checked
  for damage).
- ``tamis.io.runfolder``: the run folder: its layout, its state record, its lock.
"""
