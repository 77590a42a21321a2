-- Projects made from images (project.created): a read model, written in the transaction
-- that appends the event and rebuilt from the log by `hookbus rebuild`. Projects written
-- in the config file ([projects.<name>]) are not here: the router reads those from the
-- file; a project made from an image is found here by its repository.
CREATE TABLE projects (
    project       text PRIMARY KEY,
    -- The repository as pushed, without tag or digest ("localhost/acme/web").
    repository    text        NOT NULL UNIQUE,
    -- The image it was made from (with its tag).
    image         text        NOT NULL,
    port          integer     NOT NULL DEFAULT 0,
    host_port     integer     NOT NULL DEFAULT 0,
    -- JSON: the health probe (null: none), the stages, the image's labels.
    health        text,
    stages        text        NOT NULL,
    labels        text        NOT NULL DEFAULT '{}',
    inspected     boolean     NOT NULL DEFAULT true,
    reason        text,
    created_at    timestamptz NOT NULL,
    last_seq      bigint      NOT NULL
);
