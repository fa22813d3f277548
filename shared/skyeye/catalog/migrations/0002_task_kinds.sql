-- Task kinds beyond caption/grounding/vqa (skyeye.contracts.TaskKind).
-- Idempotent: the constraint is dropped, if there, and added again with the full list.
ALTER TABLE results
    DROP CONSTRAINT IF EXISTS results_task_kind_check,
    ADD CONSTRAINT results_task_kind_check CHECK (task_kind IN (
        'caption', 'grounding', 'vqa', 'describe', 'refer', 'identify', 'classify', 'yes_no', 'count'
    ));
