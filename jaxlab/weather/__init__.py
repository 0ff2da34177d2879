"""HRRR convection forecasts: conditional DDPM on GRIB2 -> Zarr data, DPM-Solver++ ensembles.

`synthetic.py` writes real GRIB2 files, `data.py` reads them with cfgrib into a Zarr store,
`diffusion.py` holds the schedules and samplers as pure functions, `model.py` the U-Nets,
`steps.py` the parts and pure steps, `train.py` the explicit loop, `ensemble.py` the sampled
members and `evaluate.py` the scores and products. Nothing is re-exported: import the modules.
"""
