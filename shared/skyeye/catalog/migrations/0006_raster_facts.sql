-- What a STAC Item's projection and band fields need of a georeferenced scene, from its header.
-- Idempotent: columns are added if missing.
-- The full-resolution raster's affine (rasterio order a, b, c, d, e, f: x = a col + b row + c,
-- y = d col + e row + f), in the scene's CRS.
ALTER TABLE assets ADD COLUMN IF NOT EXISTS transform double precision[];
-- One object per band, in band order: name (its description), common_name (eo: red, nir...),
-- data_type, nodata, shown (whether the model sees it as red, green or blue).
ALTER TABLE assets ADD COLUMN IF NOT EXISTS bands jsonb;
