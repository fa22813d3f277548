-- Detections searched by words (`q` on /collections/detections/items and `skyeye search
-- --what detections`): the search matches to_tsvector('english', label), so index exactly that.
-- Idempotent: each statement may run again on a database that already has it.
CREATE INDEX IF NOT EXISTS detections_label_search_idx
    ON detections USING gin (to_tsvector('english', label));
