-- Where each work item is on the ground: a scene tile's own outline, a frame's footprint, a whole
-- scene's or clip's extent. An alert's evidence from an answer or a caption carries it, and a
-- standing question is asked of the tiles inside its rule's area, not of every tile of an asset
-- that touches the area. NULL where the item is not placed (plain images, unplaced frames).
-- Idempotent: columns are added if missing.
ALTER TABLE work_items ADD COLUMN IF NOT EXISTS bbox double precision[];
