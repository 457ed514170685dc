"""Everything that runs in the TVM worker process: the only code of ofa-deploy that imports TVM.

The parent side (``ofa_deploy.compile``: build.py, tune.py, profile.py, rpc.py) writes a request,
``isolate.run_worker`` runs ``python -m ofa_deploy.compile.worker REQUEST.json`` (:mod:`.__main__`,
the dispatch), and the module of the same name here does the TVM part: :mod:`.build` (ONNX ->
Relax -> ``.so``), :mod:`.run` (run and time on this machine), :mod:`.rpc` (on a remote device),
:mod:`.profile` (build and time many models), :mod:`.tune` (MetaSchedule), :mod:`.cuda` (embed
nvcc-compiled kernels). A TVM crash then ends the worker, never the caller.
"""
