-- Georeferenced scenes: the asset's CRS and lon/lat extent, each detection's lon/lat footprint.
-- Boxes are PostgreSQL `box` values in (lon, lat) so a GiST index serves bbox queries
-- (`lon_lat_bbox && box '((w, s), (e, n))'`) without PostGIS.
ALTER TABLE assets ADD COLUMN IF NOT EXISTS crs text;
ALTER TABLE assets ADD COLUMN IF NOT EXISTS lon_lat_bbox box;
ALTER TABLE detections ADD COLUMN IF NOT EXISTS footprint jsonb;
ALTER TABLE detections ADD COLUMN IF NOT EXISTS lon_lat_bbox box;
CREATE INDEX IF NOT EXISTS assets_lon_lat_bbox_idx ON assets USING gist (lon_lat_bbox);
CREATE INDEX IF NOT EXISTS detections_lon_lat_bbox_idx ON detections USING gist (lon_lat_bbox);
-- Overlapping tiles see one object twice: the copies that non-maximum suppression drops are
-- kept but flagged, with the tile-centrality it ranked them by.
ALTER TABLE detections ADD COLUMN IF NOT EXISTS centrality real;
ALTER TABLE detections ADD COLUMN IF NOT EXISTS duplicate boolean NOT NULL DEFAULT false;
