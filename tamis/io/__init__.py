"""The storage layer: every byte a run reads or writes goes through here.

It works the same on local paths, ``gs://`` and ``s3://`` (Beam's ``FileSystems`` underneath),
and it is, with ``tamis/pipeline``, the only place that imports Beam.

- ``tamis.io.files``: reading and listing input files (literal paths versus globs, compressed
  streams checked for damage).
- ``tamis.io.runfolder``: the run folder: its layout, its state record, its lock, atomic writes.
"""
