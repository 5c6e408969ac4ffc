-- Pipeline templates a build pushed (`templates:`), beside its images: JSON, as `images`.
ALTER TABLE builds ADD COLUMN templates TEXT NOT NULL DEFAULT '[]';
