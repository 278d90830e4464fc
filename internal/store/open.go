package store

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // registers the "sqlite" database/sql driver
)

// The dialect names Dialect returns and SchemaSQL accepts.
const (
	SQLite   = "sqlite"
	Postgres = "postgres"
	MySQL    = "mysql"
)

// PollInterval is how often the MySQL backend (which has no LISTEN/NOTIFY)
// and the SQLite backend (for writes by other processes on the same file)
// read the environments' versions to notice changes made by other replicas.
// A release made on another replica reaches this one's watchers within this
// interval; writes made through this Store are delivered at once.
const PollInterval = 250 * time.Millisecond

// Target is a parsed database URL.
type Target struct {
	Dialect string // SQLite, Postgres or MySQL
	DSN     string // what the driver's sql.Open takes
	URL     string // for PostgreSQL, the URL a listener connection uses
}

// ParseURL turns a drover database URL into a driver name and DSN:
//
//	/var/lib/drover/drover.db, sqlite:///var/lib/drover/drover.db, file:drover.db
//	postgres://user:pass@host:5432/db?sslmode=disable   (also postgresql://)
//	mysql://user:pass@tcp(host:3306)/db                 (go-sql-driver DSN after mysql://)
//	mysql://user:pass@host:3306/db                      (URL form, same meaning)
//
// MySQL DSNs get parseTime=true, loc=UTC and the session settings the store
// relies on, unless the URL sets them.
func ParseURL(raw string) (Target, error) {
	switch {
	case raw == "":
		return Target{}, fmt.Errorf("store: empty database URL")
	case strings.HasPrefix(raw, "postgres://"), strings.HasPrefix(raw, "postgresql://"):
		return Target{Dialect: Postgres, DSN: raw, URL: raw}, nil
	case strings.HasPrefix(raw, "mysql://"):
		dsn, err := mysqlDSN(strings.TrimPrefix(raw, "mysql://"))
		if err != nil {
			return Target{}, fmt.Errorf("store: mysql URL: %w", err)
		}
		return Target{Dialect: MySQL, DSN: dsn}, nil
	case strings.HasPrefix(raw, "sqlite://"):
		return Target{Dialect: SQLite, DSN: sqliteDSN(strings.TrimPrefix(raw, "sqlite://"))}, nil
	case strings.HasPrefix(raw, "sqlite:"):
		return Target{Dialect: SQLite, DSN: sqliteDSN(strings.TrimPrefix(raw, "sqlite:"))}, nil
	case strings.Contains(raw, "://"):
		return Target{}, fmt.Errorf("store: unsupported database URL scheme in %q (want a path, sqlite://, postgres:// or mysql://)", redact(raw))
	default:
		return Target{Dialect: SQLite, DSN: sqliteDSN(raw)}, nil
	}
}

// sqliteDSN adds the pragmas every connection needs: foreign keys, WAL, a
// busy timeout so writers queue instead of failing, and IMMEDIATE
// transactions so a read-then-write transaction never deadlocks.
func sqliteDSN(path string) string {
	if path == "" {
		path = "drover.db"
	}
	if !strings.HasPrefix(path, "file:") {
		path = "file:" + path
	}
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	return path + sep + "_pragma=foreign_keys(1)&_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate&_time_format=sqlite"
}

func mysqlDSN(rest string) (string, error) {
	var cfg *mysql.Config
	if strings.Contains(rest, "@tcp(") || strings.Contains(rest, "@unix(") || strings.HasPrefix(rest, "tcp(") || strings.HasPrefix(rest, "unix(") {
		c, err := mysql.ParseDSN(rest)
		if err != nil {
			return "", err
		}
		cfg = c
	} else {
		u, err := url.Parse("mysql://" + rest)
		if err != nil {
			return "", err
		}
		cfg = mysql.NewConfig()
		cfg.User = u.User.Username()
		cfg.Passwd, _ = u.User.Password()
		cfg.Net = "tcp"
		cfg.Addr = u.Host
		if u.Port() == "" {
			cfg.Addr = u.Host + ":3306"
		}
		cfg.DBName = strings.TrimPrefix(u.Path, "/")
		for k, v := range u.Query() {
			if cfg.Params == nil {
				cfg.Params = map[string]string{}
			}
			cfg.Params[k] = v[0]
		}
	}
	if cfg.DBName == "" {
		return "", fmt.Errorf("no database name")
	}
	cfg.ParseTime = true
	cfg.Loc = time.UTC
	cfg.ClientFoundRows = true // UPDATE reports matched rows, not changed rows
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	if _, ok := cfg.Params["time_zone"]; !ok {
		cfg.Params["time_zone"] = "'+00:00'"
	}
	return cfg.FormatDSN(), nil
}

// redact hides a password in a URL for error messages.
func redact(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
			return u.String()
		}
	}
	return raw
}

// Open connects to the database at url (see ParseURL), runs the schema
// migrations that are pending and returns the Store. A database user that
// may not create tables gets a *PermissionError (errors.Is ErrPermission)
// when migrations are pending; with an up-to-date schema it needs only
// SELECT, INSERT, UPDATE and DELETE.
func Open(ctx context.Context, url string) (Store, error) {
	t, err := ParseURL(url)
	if err != nil {
		return nil, err
	}
	db, err := openDB(ctx, t)
	if err != nil {
		return nil, err
	}
	if _, err := migrate(ctx, db, t.Dialect); err != nil {
		db.Close()
		return nil, err
	}
	return newSQLStore(db, t), nil
}

// Migrate runs the pending schema migrations on the database at url and
// returns the names of those it applied (none when the schema is current).
// It is what `drover server migrate` runs; Open does the same.
func Migrate(ctx context.Context, url string) ([]string, error) {
	t, err := ParseURL(url)
	if err != nil {
		return nil, err
	}
	db, err := openDB(ctx, t)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	return migrate(ctx, db, t.Dialect)
}

// PoolSize is how many connections a store of dialect opens at most: 8
// for SQLite (one writer at a time anyway), 32 for PostgreSQL and MySQL.
func PoolSize(dialect string) int {
	if dialect == SQLite {
		return 8
	}
	return 32
}

func openDB(ctx context.Context, t Target) (*sql.DB, error) {
	driver := map[string]string{SQLite: "sqlite", Postgres: "pgx", MySQL: "mysql"}[t.Dialect]
	db, err := sql.Open(driver, t.DSN)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", t.Dialect, err)
	}
	// A burst of agent requests (ten thousand answered at once) uses the
	// whole pool: every connection stays open through it rather than be
	// closed after each use past a few idle ones and opened again (an
	// SQLite connection's open runs its pragmas and loses its prepared
	// statements; a PostgreSQL one costs a login), and is closed after a
	// minute unused.
	open := PoolSize(t.Dialect)
	if t.Dialect != SQLite {
		db.SetConnMaxLifetime(30 * time.Minute)
	}
	db.SetMaxOpenConns(open)
	db.SetMaxIdleConns(open)
	db.SetConnMaxIdleTime(time.Minute)
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		if perr := permissionError(t.Dialect, "", err); perr != nil {
			return nil, perr
		}
		return nil, fmt.Errorf("store: connect to %s database: %w", t.Dialect, err)
	}
	return db, nil
}
