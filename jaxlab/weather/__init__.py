"""HRRR convection forecasts: conditional DDPM on GRIB2 -> Zarr data, DPM-Solver++ ensembles.

`synthetic.py` writes real GRIB2 files, `data_grib.py` reads them by their GRIB codes (ecCodes),
`data_zarr.py` prepares the Zarr store in bounded memory, `diffusion.py` holds the schedules and
samplers as pure functions, `model.py` the U-Nets, `steps.py` the parts and pure steps,
`train.py` the explicit loop, `ensemble.py` the sampled members, `evaluate.py` the scores and
products and `predict.py` CF NetCDF ensembles from GRIB2. Nothing is re-exported.
"""
