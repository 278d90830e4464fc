-- drover control server schema, MySQL and MariaDB (InnoDB, utf8mb4).
-- +goose Up
CREATE TABLE apps (
    name       VARCHAR(255) PRIMARY KEY,
    created_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE environments (
    app        VARCHAR(255) NOT NULL,
    name       VARCHAR(255) NOT NULL,
    version    BIGINT NOT NULL DEFAULT 0,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (app, name),
    FOREIGN KEY (app) REFERENCES apps (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE releases (
    id              BIGINT AUTO_INCREMENT PRIMARY KEY,
    app             VARCHAR(255) NOT NULL,
    env             VARCHAR(255) NOT NULL,
    spec            VARCHAR(1024) NOT NULL,
    resolved_commit VARCHAR(1024) NOT NULL DEFAULT '',
    created_by      VARCHAR(255) NOT NULL DEFAULT '',
    created_at      DATETIME(6) NOT NULL,
    note            VARCHAR(1024) NOT NULL DEFAULT '',
    FOREIGN KEY (app, env) REFERENCES environments (app, name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX releases_app_env_id ON releases (app, env, id);

CREATE TABLE nodes (
    id              BIGINT AUTO_INCREMENT PRIMARY KEY,
    name            VARCHAR(255) NOT NULL,
    hostname        VARCHAR(255) NOT NULL DEFAULT '',
    app             VARCHAR(255) NOT NULL,
    env             VARCHAR(255) NOT NULL,
    roles           TEXT NOT NULL DEFAULT ('[]'),
    agent_version   VARCHAR(255) NOT NULL DEFAULT '',
    created_at      DATETIME(6) NOT NULL,
    last_seen       DATETIME(6) NOT NULL,
    current_release BIGINT NULL,
    UNIQUE (name, app, env),
    FOREIGN KEY (app, env) REFERENCES environments (app, name),
    FOREIGN KEY (current_release) REFERENCES releases (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX nodes_app_env ON nodes (app, env);

CREATE TABLE upgrades (
    id           BIGINT AUTO_INCREMENT PRIMARY KEY,
    node_id      BIGINT NOT NULL,
    release_id   BIGINT NOT NULL,
    status       VARCHAR(255) NOT NULL,
    current_step VARCHAR(255) NOT NULL DEFAULT '',
    created_at   DATETIME(6) NOT NULL,
    started_at   DATETIME(6) NULL,
    ended_at     DATETIME(6) NULL,
    error        TEXT NOT NULL DEFAULT (''),
    FOREIGN KEY (node_id) REFERENCES nodes (id),
    FOREIGN KEY (release_id) REFERENCES releases (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX upgrades_node ON upgrades (node_id, id);
CREATE INDEX upgrades_release ON upgrades (release_id, id);

CREATE TABLE upgrade_steps (
    upgrade_id BIGINT NOT NULL,
    seq        INTEGER NOT NULL,
    name       VARCHAR(255) NOT NULL,
    status     VARCHAR(255) NOT NULL,
    started_at DATETIME(6) NULL,
    ended_at   DATETIME(6) NULL,
    log        MEDIUMTEXT NOT NULL DEFAULT (''),
    PRIMARY KEY (upgrade_id, name),
    FOREIGN KEY (upgrade_id) REFERENCES upgrades (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE tokens (
    id         BIGINT AUTO_INCREMENT PRIMARY KEY,
    kind       VARCHAR(255) NOT NULL,
    node       VARCHAR(255) NOT NULL DEFAULT '',
    hash       VARCHAR(128) NOT NULL UNIQUE,
    note       VARCHAR(1024) NOT NULL DEFAULT '',
    created_at DATETIME(6) NOT NULL,
    expires_at DATETIME(6) NULL,
    used_at    DATETIME(6) NULL,
    revoked    BOOLEAN NOT NULL DEFAULT FALSE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE audit_events (
    id     BIGINT AUTO_INCREMENT PRIMARY KEY,
    at     DATETIME(6) NOT NULL,
    actor  VARCHAR(255) NOT NULL,
    action VARCHAR(255) NOT NULL,
    detail TEXT NOT NULL DEFAULT ('{}')
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- +goose Down
DROP TABLE audit_events;
DROP TABLE tokens;
DROP TABLE upgrade_steps;
DROP TABLE upgrades;
DROP TABLE nodes;
DROP TABLE releases;
DROP TABLE environments;
DROP TABLE apps;
