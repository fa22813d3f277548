-- UAV clips: what a clip asset is (duration, frame rate, codec, when it was filmed), the frames
-- sampled from it, and which frame each per-frame work item shows.
-- Idempotent: each statement may run again on a database that already has it.
ALTER TABLE assets ADD COLUMN IF NOT EXISTS duration_s double precision;
ALTER TABLE assets ADD COLUMN IF NOT EXISTS fps double precision;
ALTER TABLE assets ADD COLUMN IF NOT EXISTS frame_count integer;
ALTER TABLE assets ADD COLUMN IF NOT EXISTS video_codec text;
-- from user metadata (start-datetime) or the container's creation_time; a STAC Item's
-- start_datetime / end_datetime (end = start + duration)
ALTER TABLE assets ADD COLUMN IF NOT EXISTS start_time timestamptz;
ALTER TABLE assets ADD COLUMN IF NOT EXISTS end_time timestamptz;

CREATE TABLE IF NOT EXISTS clip_frames (
    asset_id      uuid             NOT NULL REFERENCES assets ON DELETE CASCADE,
    frame_index   integer          NOT NULL,
    -- presentation time from the clip's start
    time_s        double precision NOT NULL,
    sampled_by    text             NOT NULL CHECK (sampled_by IN ('uniform', 'scene_change')),
    scene_score   real,
    -- the frame as a PNG, extracted once by the planner
    bucket        text             NOT NULL,
    object_key    text             NOT NULL,
    -- the whole frame on the ground, when a sidecar places the clip (GeoJSON Polygon, lon/lat)
    footprint     jsonb,
    lon_lat_bbox  box,
    PRIMARY KEY (asset_id, frame_index)
);
CREATE INDEX IF NOT EXISTS clip_frames_lon_lat_bbox_idx ON clip_frames USING gist (lon_lat_bbox);

-- the sampled frame a per-frame work item shows; NULL for image tiles and the clip caption
ALTER TABLE work_items ADD COLUMN IF NOT EXISTS frame_index integer;

ALTER TABLE results
    DROP CONSTRAINT IF EXISTS results_task_kind_check,
    ADD CONSTRAINT results_task_kind_check CHECK (task_kind IN (
        'caption', 'grounding', 'vqa', 'describe', 'refer', 'identify', 'classify', 'yes_no',
        'count', 'video'
    ));
