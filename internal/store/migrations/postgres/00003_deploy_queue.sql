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
    since      TIMESTAMPTZ NULL,
    expires_at TIMESTAMPTZ NULL,
    PRIMARY KEY (app, env),
    FOREIGN KEY (app, env) REFERENCES environments (app, name)
);

CREATE TABLE deploy_tickets (
    id            BIGSERIAL PRIMARY KEY,
    app           TEXT NOT NULL,
    env           TEXT NOT NULL,
    holder        TEXT NOT NULL,
    state         TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    touched_at    TIMESTAMPTZ NOT NULL,
    token         BIGINT NOT NULL DEFAULT 0,
    acquired_at   TIMESTAMPTZ NULL,
    expires_at    TIMESTAMPTZ NULL,
    ended_at      TIMESTAMPTZ NULL,
    superseded_by BIGINT NOT NULL DEFAULT 0,
    FOREIGN KEY (app, env) REFERENCES environments (app, name)
);
CREATE INDEX deploy_tickets_queue ON deploy_tickets (app, env, state, id);

-- +goose Down
DROP TABLE deploy_tickets;
DROP TABLE deploy_leases;
