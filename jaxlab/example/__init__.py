"""The core's own tiny task: regression on a planted signal, wired exactly like the five tasks.

It drives (and tests) the shared core end to end and is the reference for the task contract
(docs/task_contract.md): `format.py` names the files, `synthetic.py` writes them, `data.py`
reads them, `model.py`, `steps.py` (parts and pure steps), `train.py` with its explicit loop,
`evaluate.py` restoring a checkpoint. The binaries import the modules by name; this file
re-exports nothing.
"""
