"""GravityViT: Gravity Spy glitch classification with a multi-view ViT and cross-attention fusion.

`format.py` holds the published files' names and layout, `data.py` reads the HDF5 (and the PNG
tarball), `synthetic.py` writes the same layout with planted morphologies, `model.py` holds the
timm-identical ViT, the fusion and the CNN baseline, `timm_import.py` maps timm state dicts,
`steps.py` the parts and the pure steps, `train.py` the epoch loop, `evaluate.py` the checkpoint
evaluation. The binaries import the modules by name; this file re-exports nothing.
"""
