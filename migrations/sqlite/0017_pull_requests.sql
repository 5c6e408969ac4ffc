-- The latest state of each pull request a delivery described, for the /gcbrun comments that
-- follow (a comment's delivery does not carry the pull request's head or base).
CREATE TABLE pull_requests (
    repository TEXT NOT NULL,     -- owner/name, lowercase
    number INTEGER NOT NULL,
    pull_request TEXT NOT NULL,   -- JSON: webhooks::PullRequest
    PRIMARY KEY (repository, number)
);
