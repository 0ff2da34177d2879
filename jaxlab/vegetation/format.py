"""File-format facts of GreenEarthNet minicubes (`<root>/<track>/<region>/<cube>.nc`), shared by
the reader (`data.py`), its checks, the data report (`data_report.py`) and the demo-data writer
(`synthetic.py`): the variable names of a cube and its length.
"""

from __future__ import annotations

NUM_DAYS = 150  # daily time steps of one minicube
BANDS = ("s2_B02", "s2_B03", "s2_B04", "s2_B8A")  # Sentinel-2 blue, green, red, narrow NIR
S2_MASKS = ("s2_mask", "s2_SCL", "s2_dlmask", "s2_avail")
STATIC = ("esawc_lc", "cop_dem", "geom_cls")  # ESA WorldCover land cover, DEM, geomorphons
EOBS = ("eobs_tg", "eobs_tn", "eobs_tx", "eobs_rr", "eobs_pp", "eobs_hu", "eobs_qq", "eobs_fg")
VARIABLES = (*BANDS, *S2_MASKS, *STATIC, *EOBS)  # every variable a cube holds
# Where climatology predictions sit in a data folder: <root>/climatology/<track>/<region>/<cube>.nc
CLIMATOLOGY_FOLDER = "climatology"
