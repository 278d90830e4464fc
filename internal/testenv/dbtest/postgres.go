package dbtest

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // "pgx" database/sql driver

	"github.com/drover/drover/internal/testenv/debpkg"
)

// postgresBin returns the directory of the newest installed PostgreSQL's
// programs (Debian keeps them out of PATH), or "".
func postgresBin() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, d := range dirs {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "postgres")) {
			return d
		}
	}
	return ""
}

func pgMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

type pgServer struct {
	dir   string // temp dir: data/, the socket, the log
	port  int
	proc  *proc
	admin *sql.DB // superuser "postgres" on database "postgres"
}

// startPostgres initialises a cluster in a temp dir and runs postgres on a
// free loopback port. Root may not run postgres, so as root it runs as the
// "postgres" user the Debian package creates.
func startPostgres(t testing.TB) (server, error) {
	if err := debpkg.Ensure("postgresql", func() bool { return postgresBin() != "" }, "service", "postgresql", "stop"); err != nil {
		return nil, err
	}
	bin := postgresBin()
	var cred *syscall.Credential
	dir, err := os.MkdirTemp("", "drover-dbtest-pg-")
	if err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("running postgres as root is refused and there is no postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	if err := run(cred, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		p, err := start(cred, filepath.Join(dir, fmt.Sprintf("postgres-%d.log", port)), filepath.Join(bin, "postgres"),
			"-D", data, "-k", dir, "-p", strconv.Itoa(port),
			"-c", "listen_addresses=127.0.0.1", "-c", "max_connections=400", "-c", "shared_buffers=64MB",
			"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		s := &pgServer{dir: dir, port: port, proc: p}
		s.admin, err = sql.Open("pgx", s.url("postgres", "", ""))
		if err != nil {
			s.stop()
			return nil, err
		}
		if lastErr = p.waitReady("postgres", 60*time.Second, s.admin.PingContext); lastErr == nil {
			t.Logf("dbtest: postgres %s on 127.0.0.1:%d, data in %s", filepath.Base(filepath.Dir(bin)), port, data)
			return s, nil
		}
		s.admin.Close()
		p.stop(syscall.SIGQUIT, 5*time.Second)
	}
	os.RemoveAll(dir)
	return nil, lastErr
}

func (s *pgServer) url(db, user, password string) string {
	if user == "" {
		user = "postgres"
	}
	cred := user
	if password != "" {
		cred += ":" + password
	}
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", cred, s.port, db)
}

func (s *pgServer) newDatabase(t testing.TB) string {
	t.Helper()
	name := nextName()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("dbtest: create postgres database: %v", err)
	}
	return name
}

func (s *pgServer) exec(db string, stmts ...string) error {
	if db == "" {
		db = "postgres"
	}
	conn, err := sql.Open("pgx", s.url(db, "", ""))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, q := range stmts {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

func (s *pgServer) stop() {
	if s.admin != nil {
		s.admin.Close()
	}
	s.proc.stop(syscall.SIGINT, 10*time.Second) // SIGINT: fast shutdown
	os.RemoveAll(s.dir)
}
