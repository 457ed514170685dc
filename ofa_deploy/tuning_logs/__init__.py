"""The ``tuning_logs/<target>/`` folders: one owner for their layout, databases and hashes (no TVM).

Everything tuned or profiled for a target lives in one folder of the repository's ``tuning_logs/``
(``OFA_DEPLOY_TUNING_LOGS`` overrides it): the MetaSchedule database ``tune`` writes and
``compile`` applies, ``tune``'s resume state, and the latency models ``profile`` writes and
``search`` reads (tuning_logs/README.md lists the files).

* :mod:`.layout`: where the folders are and what every file in them is called;
* :mod:`.database`: the database files: validation, repair after a kill, content hash, the packed
  (gzip) form, and the checks that refuse a database of another target.

Compile, the latency models and deploy take paths and file names from here; this package imports
only the target registry and the leaf utilities.
"""
