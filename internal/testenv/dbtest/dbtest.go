// Package dbtest gives tests a fresh, empty database of each kind the
// control server supports, as a URL store.Open accepts:
//
//	func TestMain(m *testing.M) { dbtest.Main(m) }
//
//	func TestX(t *testing.T) {
//		for _, b := range dbtest.Backends {
//			t.Run(b, func(t *testing.T) {
//				url := dbtest.New(t, b) // skips (or fails when CI=true) if b cannot run here
//				...
//			})
//		}
//	}
//
// SQLite is a file in t.TempDir(). PostgreSQL and MariaDB are real servers:
// installed from Debian with apt-get when missing (under a file lock, so
// test binaries running in parallel install once), started as private child
// processes of the test binary on a free loopback port with a data directory
// in a temp dir, never the system's services or standard ports. Each server
// starts on first use, serves every test of the binary with a new database
// per New call, and is stopped by Main when the tests end (and killed by the
// kernel if the test binary dies first).
//
// When a server cannot be installed or started, New skips the test with the
// reason, or fails it when the environment variable CI is "true".
package dbtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The backends New accepts.
const (
	SQLite   = "sqlite"
	Postgres = "postgres"
	MySQL    = "mysql" // served by MariaDB
)

// Backends lists every backend, for tests that run once per backend.
var Backends = []string{SQLite, Postgres, MySQL}

// server is a running database server that hands out databases.
type server interface {
	// newDatabase creates an empty database and returns its name.
	newDatabase(t testing.TB) string
	// url returns the URL of database db for user (admin when user is "").
	url(db, user, password string) string
	// exec runs admin SQL statements on database db ("" for none).
	exec(db string, stmts ...string) error
	stop()
}

// servers holds this test binary's running servers: the one piece of
// process state, because a server outlives the test that started it and is
// shared by all tests of the binary. Main stops them.
var servers = struct {
	sync.Mutex
	byKind map[string]server
	errs   map[string]error
	n      int // databases made, for unique names
}{byKind: map[string]server{}, errs: map[string]error{}}

// Main runs the tests and then stops the database servers they started.
// Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	Stop()
	os.Exit(code)
}

// Stop stops every server this process started. Main calls it; call it
// yourself if your TestMain cannot use Main.
func Stop() {
	servers.Lock()
	defer servers.Unlock()
	for kind, s := range servers.byKind {
		s.stop()
		delete(servers.byKind, kind)
	}
}

// New returns the URL of a fresh, empty database of the backend: SQLite,
// Postgres or MySQL. The database user is an administrator of it.
func New(t testing.TB, backend string) string {
	t.Helper()
	if backend == SQLite {
		return "sqlite://" + filepath.Join(t.TempDir(), "drover.db")
	}
	s := get(t, backend)
	return s.url(s.newDatabase(t), "", "")
}

// Unprivileged returns a URL for the database of adminURL (made by New for
// Postgres or MySQL) as a new user that may read and write existing tables
// but not create any: CONNECT and USAGE plus SELECT, INSERT, UPDATE and
// DELETE on the tables that exist now, no CREATE. On a fresh database that
// user can do nothing useful, which is what permission tests need.
func Unprivileged(t testing.TB, backend, adminURL string) string {
	t.Helper()
	s := get(t, backend)
	db := dbName(adminURL)
	user := "nocreate_" + nextName()
	const password = "nocreate-pw"
	var stmts []string
	switch backend {
	case Postgres:
		stmts = []string{
			fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD '%s'`, user, password),
			`REVOKE CREATE ON SCHEMA public FROM PUBLIC`,
			fmt.Sprintf(`GRANT CONNECT ON DATABASE %s TO %s`, db, user),
			fmt.Sprintf(`GRANT USAGE ON SCHEMA public TO %s`, user),
			fmt.Sprintf(`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %s`, user),
			fmt.Sprintf(`GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %s`, user),
		}
	case MySQL:
		stmts = []string{
			fmt.Sprintf(`CREATE USER '%s'@'127.0.0.1' IDENTIFIED BY '%s'`, user, password),
			fmt.Sprintf("GRANT SELECT, INSERT, UPDATE, DELETE ON `%s`.* TO '%s'@'127.0.0.1'", db, user),
		}
	default:
		t.Fatalf("dbtest: Unprivileged: backend %q has no users", backend)
	}
	if err := s.exec(db, stmts...); err != nil {
		t.Fatalf("dbtest: create unprivileged user on %s: %v", backend, err)
	}
	return s.url(db, user, password)
}

// Exec runs SQL statements on the database of url (made by New) as the
// server's administrator; for tests that prepare a database by hand.
func Exec(t testing.TB, backend, url string, stmts ...string) {
	t.Helper()
	if err := get(t, backend).exec(dbName(url), stmts...); err != nil {
		t.Fatalf("dbtest: exec on %s: %v", backend, err)
	}
}

// get returns the running server of kind, starting it on first use; it
// skips or fails t when the server cannot run here.
func get(t testing.TB, kind string) server {
	t.Helper()
	servers.Lock()
	defer servers.Unlock()
	if s, ok := servers.byKind[kind]; ok {
		return s
	}
	if err, ok := servers.errs[kind]; ok {
		unavailable(t, kind, err)
	}
	var s server
	var err error
	switch kind {
	case Postgres:
		s, err = startPostgres(t)
	case MySQL:
		s, err = startMariaDB(t)
	default:
		t.Fatalf("dbtest: unknown backend %q (want %q, %q or %q)", kind, SQLite, Postgres, MySQL)
	}
	if err != nil {
		servers.errs[kind] = err
		unavailable(t, kind, err)
	}
	servers.byKind[kind] = s
	return s
}

func unavailable(t testing.TB, kind string, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("dbtest: %s is required in CI (CI=true) but cannot run: %v", kind, err)
	}
	t.Skipf("dbtest: skipping, %s cannot run here: %v", kind, err)
}

// nextName returns a database or user name unique on this machine.
func nextName() string {
	servers.Lock()
	defer servers.Unlock()
	servers.n++
	return fmt.Sprintf("t%d_%d", os.Getpid(), servers.n)
}

// dbName returns the database name in a URL made by New.
func dbName(url string) string {
	if i := strings.IndexByte(url, '?'); i >= 0 {
		url = url[:i]
	}
	return url[strings.LastIndexByte(url, '/')+1:]
}
