"""GreenEarthNet vegetation forecasting: ConvLSTM encoder + Fourier decoder on reflectance deltas.

`data.py` reads the minicubes (BAP composite, weather anomalies, land cover; the pure features in
`data_features.py`), `model.py` the network, `losses.py` the masked log-cosh loss, `steps.py` the
parts and pure steps, `train.py` the loop, `evaluate.py` scoring from a checkpoint with
predictions in the official layout, `metrics.py` the official NDVI scores. See README.md beside
this file and docs/task_contract.md.
"""
