-- Deploy queue: one lease per environment (the deploy lock, with a fencing
-- token that only grows) and the FIFO queue of tickets waiting for it.
-- Every change to an environment's tickets or lease happens with its
-- deploy_leases row locked, so replicas never both take the lease.
-- +goose Up
CREATE TABLE deploy_leases (
    app        TEXT NOT NULL,
    env        TEXT NOT NULL,
    ticket_id  BIGINT NOT NULL DEFAULT 0,
    holder     TEXT NOT NULL DEFAULT '',
    token      BIGINT NOT NULL DEFAULT 0,
    since      DATETIME NULL,
    expires_at DATETIME NULL,
    PRIMARY KEY (app, env),
    FOREIGN KEY (app, env) REFERENCES environments (app, name)
);

CREATE TABLE deploy_tickets (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    app           TEXT NOT NULL,
    env           TEXT NOT NULL,
    holder        TEXT NOT NULL,
    state         TEXT NOT NULL,
    created_at    DATETIME NOT NULL,
    touched_at    DATETIME NOT NULL,
    token         BIGINT NOT NULL DEFAULT 0,
    acquired_at   DATETIME NULL,
    expires_at    DATETIME NULL,
    ended_at      DATETIME NULL,
    superseded_by BIGINT NOT NULL DEFAULT 0,
    FOREIGN KEY (app, env) REFERENCES environments (app, name)
);
CREATE INDEX deploy_tickets_queue ON deploy_tickets (app, env, state, id);

-- +goose Down
DROP TABLE deploy_tickets;
DROP TABLE deploy_leases;
