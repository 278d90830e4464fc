-- Deploy queue: one lease per environment (the deploy lock, with a fencing
-- token that only grows) and the FIFO queue of tickets waiting for it.
-- Every change to an environment's tickets or lease happens with its
-- deploy_leases row locked, so replicas never both take the lease.
-- +goose Up
CREATE TABLE deploy_leases (
    app        VARCHAR(255) NOT NULL,
    env        VARCHAR(255) NOT NULL,
    ticket_id  BIGINT NOT NULL DEFAULT 0,
    holder     VARCHAR(1024) NOT NULL DEFAULT '',
    token      BIGINT NOT NULL DEFAULT 0,
    since      DATETIME(6) NULL,
    expires_at DATETIME(6) NULL,
    PRIMARY KEY (app, env),
    FOREIGN KEY (app, env) REFERENCES environments (app, name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE deploy_tickets (
    id            BIGINT AUTO_INCREMENT PRIMARY KEY,
    app           VARCHAR(255) NOT NULL,
    env           VARCHAR(255) NOT NULL,
    holder        VARCHAR(1024) NOT NULL,
    state         VARCHAR(32) NOT NULL,
    created_at    DATETIME(6) NOT NULL,
    touched_at    DATETIME(6) NOT NULL,
    token         BIGINT NOT NULL DEFAULT 0,
    acquired_at   DATETIME(6) NULL,
    expires_at    DATETIME(6) NULL,
    ended_at      DATETIME(6) NULL,
    superseded_by BIGINT NOT NULL DEFAULT 0,
    FOREIGN KEY (app, env) REFERENCES environments (app, name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX deploy_tickets_queue ON deploy_tickets (app, env, state, id);

-- +goose Down
DROP TABLE deploy_tickets;
DROP TABLE deploy_leases;
