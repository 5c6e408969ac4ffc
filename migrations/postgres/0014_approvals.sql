-- Builds that wait for a person's approval (Cloud Build's `approval`): PENDING until approved
-- (QUEUED) or rejected (REJECTED). `approval_state` is PENDING, APPROVED, REJECTED or CANCELLED,
-- NULL for a build that needs none; the decision's approver, time (unix ms) and comment are kept
-- once it is made. A build's `queueTtl` counts from its approval: `queue_deadline` is moved by
-- the wait when it is approved, and a hand-back to another pool counts from `approval_time`.
ALTER TABLE builds ADD COLUMN approval_state TEXT;
ALTER TABLE builds ADD COLUMN approver TEXT;
ALTER TABLE builds ADD COLUMN approval_time BIGINT;
ALTER TABLE builds ADD COLUMN approval_comment TEXT;
