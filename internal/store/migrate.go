package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strings"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"modernc.org/sqlite"
)

//go:embed migrations
var migrations embed.FS

// versionTable is goose's bookkeeping table; named for drover so it cannot
// collide with an application's own goose table in a shared database.
const versionTable = "drover_schema_version"

// migrationLockID identifies the advisory lock that serialises migrations
// of replicas starting together (PostgreSQL advisory lock, MySQL GET_LOCK).
const migrationLockID = 0x64726f766572 // "drover"

func migrationsFS(dialect string) (fs.FS, error) {
	return fs.Sub(migrations, "migrations/"+dialect)
}

func migrate(ctx context.Context, db *sql.DB, dialect string) ([]string, error) {
	p, err := provider(db, dialect)
	if err != nil {
		return nil, err
	}
	results, err := p.Up(ctx)
	if err != nil {
		if perr := permissionError(dialect, currentUser(ctx, db, dialect), err); perr != nil {
			return nil, perr
		}
		return nil, fmt.Errorf("store: migrate %s schema: %w", dialect, err)
	}
	var applied []string
	for _, r := range results {
		applied = append(applied, r.Source.Path)
	}
	return applied, nil
}

// provider is goose's migrator for dialect's embedded migrations on db,
// serialised across replicas by a lock on the database.
func provider(db *sql.DB, dialect string) (*goose.Provider, error) {
	fsys, err := migrationsFS(dialect)
	if err != nil {
		return nil, fmt.Errorf("store: migrations for %s: %w", dialect, err)
	}
	gd := map[string]goose.Dialect{SQLite: goose.DialectSQLite3, Postgres: goose.DialectPostgres, MySQL: goose.DialectMySQL}[dialect]
	opts := []goose.ProviderOption{goose.WithTableName(versionTable), goose.WithDisableGlobalRegistry(true)}
	switch dialect {
	case Postgres:
		l, err := lock.NewPostgresSessionLocker(lock.WithLockID(migrationLockID), lock.WithLockTimeout(1, 300))
		if err != nil {
			return nil, fmt.Errorf("store: migration lock: %w", err)
		}
		opts = append(opts, goose.WithSessionLocker(l))
	case MySQL:
		opts = append(opts, goose.WithSessionLocker(mysqlLocker{}))
	}
	p, err := goose.NewProvider(gd, db, fsys, opts...)
	if err != nil {
		return nil, fmt.Errorf("store: migrations: %w", err)
	}
	return p, nil
}

// mysqlLocker serialises migrations across replicas with GET_LOCK, which any
// user may take, so it works for a user without CREATE as well.
type mysqlLocker struct{}

func (mysqlLocker) SessionLock(ctx context.Context, conn *sql.Conn) error {
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 300)", fmt.Sprint("drover-migrate-", migrationLockID)).Scan(&got); err != nil {
		return fmt.Errorf("GET_LOCK: %w", err)
	}
	if got.Int64 != 1 {
		return fmt.Errorf("GET_LOCK: timed out after 300s waiting for another replica's migration")
	}
	return nil
}

func (mysqlLocker) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	_, err := conn.ExecContext(ctx, "SELECT RELEASE_LOCK(?)", fmt.Sprint("drover-migrate-", migrationLockID))
	return err
}

// PermissionError says which right the database user lacks and what to do.
type PermissionError struct {
	Dialect string
	User    string // database user, when known
	Right   string // the right that was refused, e.g. "CREATE on schema public"
	Fix     string // what to do, for a person
	Err     error  // the driver's error
}

// Error implements error.
func (e *PermissionError) Error() string {
	user := e.User
	if user == "" {
		user = "the configured user"
	} else {
		user = fmt.Sprintf("%q", user)
	}
	return fmt.Sprintf("store: %s user %s lacks a right drover needs: %s (%v); %s", e.Dialect, user, e.Right, e.Err, e.Fix)
}

// Unwrap returns the driver's error.
func (e *PermissionError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrPermission) true.
func (e *PermissionError) Is(target error) bool { return target == ErrPermission }

var (
	pgDenied    = regexp.MustCompile(`permission denied for (schema|database|table|sequence|relation) "?([^" ]+)"?`)
	mysqlDenied = regexp.MustCompile(`^(\w+) command denied`)
)

const printSQL = `or have a database administrator apply the schema printed by "drover server migrate --print-sql", then start again`

// permissionError recognises "you may not do that" errors of each driver and
// turns them into a *PermissionError, or returns nil.
func permissionError(dialect, user string, err error) error {
	var pg *pgconn.PgError
	var my *mysql.MySQLError
	var lite *sqlite.Error
	switch {
	case errors.As(err, &pg) && pg.Code == "42501": // insufficient_privilege
		right, fix := "required", "grant it "+printSQL
		if m := pgDenied.FindStringSubmatch(pg.Message); m != nil {
			switch m[1] {
			case "schema":
				right = "CREATE on schema " + m[2]
				fix = fmt.Sprintf("grant it (GRANT CREATE ON SCHEMA %s TO %s;) %s", m[2], orRole(user), printSQL)
			case "database":
				right = "CREATE (or CONNECT) on database " + m[2]
				fix = fmt.Sprintf("grant it (GRANT CREATE, CONNECT ON DATABASE %s TO %s;) %s", m[2], orRole(user), printSQL)
			default:
				right = "SELECT, INSERT, UPDATE, DELETE on " + m[1] + " " + m[2]
				fix = fmt.Sprintf("grant them (GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %s; GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %s;)", orRole(user), orRole(user))
			}
		}
		return &PermissionError{Dialect: dialect, User: user, Right: right, Fix: fix, Err: err}
	case errors.As(err, &pg) && pg.Code == "42P06" && strings.Contains(pg.Message, "permission"):
		return &PermissionError{Dialect: dialect, User: user, Right: "CREATE", Fix: printSQL, Err: err}
	case errors.As(err, &my) && (my.Number == 1142 || my.Number == 1044 || my.Number == 1227):
		right := "required"
		switch my.Number {
		case 1142: // CREATE command denied to user 'u'@'h' for table 't'
			if m := mysqlDenied.FindStringSubmatch(my.Message); m != nil {
				right = m[1]
			}
		case 1044: // Access denied for user 'u'@'h' to database 'd'
			right = "access (CREATE, SELECT, INSERT, UPDATE, DELETE, INDEX, REFERENCES)"
		}
		fix := fmt.Sprintf("grant it (GRANT CREATE, ALTER, INDEX, REFERENCES, SELECT, INSERT, UPDATE, DELETE ON <database>.* TO %s;) %s", orRole(user), printSQL)
		return &PermissionError{Dialect: dialect, User: user, Right: right, Fix: fix, Err: err}
	case errors.As(err, &lite) && (lite.Code()&0xff == 8 || lite.Code()&0xff == 14): // SQLITE_READONLY, SQLITE_CANTOPEN
		return &PermissionError{Dialect: dialect, User: user, Right: "write access to the database file and its directory",
			Fix: "check the owner and mode of the file, its -wal and -shm files and the directory (drover server --data DIR)", Err: err}
	}
	return nil
}

func orRole(user string) string {
	if user == "" {
		return "<user>"
	}
	return user
}

func currentUser(ctx context.Context, db *sql.DB, dialect string) string {
	var q string
	switch dialect {
	case Postgres:
		q = "SELECT current_user"
	case MySQL:
		q = "SELECT CURRENT_USER()"
	default:
		return ""
	}
	var u string
	if err := db.QueryRowContext(ctx, q).Scan(&u); err != nil {
		return ""
	}
	return u
}

// SchemaSQL returns the SQL that creates the whole current schema for
// dialect ("sqlite", "postgres" or "mysql"), including goose's version table
// marked up to date, so an administrator can install it by hand and let a
// less privileged user run the server (`drover server migrate --print-sql`).
// It returns "" for an unknown dialect.
func SchemaSQL(dialect string) string {
	fsys, err := migrationsFS(dialect)
	if err != nil {
		return ""
	}
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil || len(names) == 0 {
		return ""
	}
	sort.Strings(names)
	var b strings.Builder
	fmt.Fprintf(&b, "-- drover schema for %s; apply as a user that may create tables.\n", dialect)
	switch dialect {
	case Postgres:
		fmt.Fprintf(&b, "CREATE TABLE %s (\n    id integer PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY,\n    version_id bigint NOT NULL,\n    is_applied boolean NOT NULL,\n    tstamp timestamp NOT NULL DEFAULT now()\n);\n", versionTable)
	case MySQL:
		fmt.Fprintf(&b, "CREATE TABLE %s (\n    id bigint(20) unsigned NOT NULL AUTO_INCREMENT,\n    version_id bigint NOT NULL,\n    is_applied boolean NOT NULL,\n    tstamp datetime NULL default CURRENT_TIMESTAMP,\n    PRIMARY KEY(id)\n);\n", versionTable)
	case SQLite:
		fmt.Fprintf(&b, "CREATE TABLE %s (\n    id INTEGER PRIMARY KEY AUTOINCREMENT,\n    version_id INTEGER NOT NULL,\n    is_applied INTEGER NOT NULL,\n    tstamp TIMESTAMP DEFAULT (datetime('now'))\n);\n", versionTable)
	}
	fmt.Fprintf(&b, "INSERT INTO %s (version_id, is_applied) VALUES (0, %s);\n", versionTable, sqlTrue(dialect))
	for _, name := range names {
		data, err := fs.ReadFile(fsys, name)
		if err != nil {
			return ""
		}
		var version int64
		if _, err := fmt.Sscanf(name, "%d_", &version); err != nil {
			return ""
		}
		fmt.Fprintf(&b, "\n-- %s\n%s\n", name, upSection(string(data)))
		fmt.Fprintf(&b, "INSERT INTO %s (version_id, is_applied) VALUES (%d, %s);\n", versionTable, version, sqlTrue(dialect))
	}
	return b.String()
}

func sqlTrue(dialect string) string {
	if dialect == SQLite {
		return "1"
	}
	return "true"
}

// upSection returns the statements between "-- +goose Up" and
// "-- +goose Down", without goose's annotations.
func upSection(src string) string {
	var out []string
	in := false
	for _, line := range strings.Split(src, "\n") {
		t := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(t, "-- +goose Up"):
			in = true
			continue
		case strings.HasPrefix(t, "-- +goose Down"):
			in = false
			continue
		case strings.HasPrefix(t, "-- +goose"):
			continue
		}
		if in {
			out = append(out, line)
		}
	}
	return strings.TrimSpace(strings.Join(out, "\n"))
}
