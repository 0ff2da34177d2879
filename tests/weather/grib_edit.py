"""Edits of GRIB2 files the weather tests share (malformed inputs for the reader and the script)."""

import eccodes


def with_missing_dew_point(source: str, target: str) -> None:
    """`source` with 3 points of its 2 m dew point marked missing (a GRIB2 bitmap)."""
    with open(source, "rb") as f, open(target, "wb") as out:
        while (h := eccodes.codes_grib_new_from_file(f)) is not None:
            if (
                eccodes.codes_get(h, "parameterNumber") == 6
                and eccodes.codes_get(h, "typeOfFirstFixedSurface", ktype=int) == 103
            ):
                values = eccodes.codes_get_values(h)
                values[:3] = 9999.0
                eccodes.codes_set(h, "missingValue", 9999.0)
                eccodes.codes_set(h, "bitmapPresent", 1)
                eccodes.codes_set_values(h, values)
            eccodes.codes_write(h, out)
            eccodes.codes_release(h)
