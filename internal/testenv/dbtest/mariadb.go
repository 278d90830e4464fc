package dbtest

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/drover/drover/internal/testenv/debpkg"
)

const (
	mariadbd      = "/usr/sbin/mariadbd"
	mariadbUser   = "dbtest" // administrator the tests connect as, over TCP
	mariadbPasswd = "dbtest"
)

// mariadbInstallDB returns the path of mariadb-install-db (or its older
// name), or "".
func mariadbInstallDB() string {
	for _, p := range []string{"/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"} {
		if isExecutable(p) {
			return p
		}
	}
	return ""
}

type mariaServer struct {
	dir    string
	socket string
	port   int
	proc   *proc
	admin  *sql.DB // root over the unix socket
}

// startMariaDB initialises a data directory in a temp dir and runs mariadbd
// on a free loopback port and a private socket, as root (--user=root) when
// the tests run as root.
func startMariaDB(t testing.TB) (server, error) {
	have := func() bool { return isExecutable(mariadbd) && mariadbInstallDB() != "" }
	if err := debpkg.Ensure("mariadb-server", have, "service", "mariadb", "stop"); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "drover-dbtest-mariadb-")
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	userArgs := []string{}
	if os.Geteuid() == 0 {
		userArgs = append(userArgs, "--user=root")
	}
	installArgs := append([]string{"--no-defaults", "--datadir=" + data, "--auth-root-authentication-method=normal",
		"--skip-test-db", "--skip-name-resolve"}, userArgs...)
	if err := run(nil, mariadbInstallDB(), installArgs...); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	socket := filepath.Join(dir, "mysqld.sock")
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		args := append([]string{"--no-defaults", "--datadir=" + data, "--socket=" + socket, "--port=" + strconv.Itoa(port),
			"--bind-address=127.0.0.1", "--skip-name-resolve", "--pid-file=" + filepath.Join(dir, "mariadbd.pid"),
			"--tmpdir=" + dir, "--max-connections=500", "--innodb-buffer-pool-size=64M",
			"--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", "--skip-log-bin",
			"--character-set-server=utf8mb4", "--collation-server=utf8mb4_bin"}, userArgs...)
		p, err := start(nil, filepath.Join(dir, fmt.Sprintf("mariadbd-%d.log", port)), mariadbd, args...)
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		s := &mariaServer{dir: dir, socket: socket, port: port, proc: p}
		cfg := mysql.NewConfig()
		cfg.User, cfg.Net, cfg.Addr = "root", "unix", socket
		cfg.MultiStatements = true
		s.admin, err = sql.Open("mysql", cfg.FormatDSN())
		if err != nil {
			s.stop()
			return nil, err
		}
		if lastErr = p.waitReady("mariadbd", 60*time.Second, s.admin.PingContext); lastErr == nil {
			lastErr = s.exec("",
				fmt.Sprintf("CREATE USER '%s'@'127.0.0.1' IDENTIFIED BY '%s'", mariadbUser, mariadbPasswd),
				fmt.Sprintf("GRANT ALL PRIVILEGES ON *.* TO '%s'@'127.0.0.1' WITH GRANT OPTION", mariadbUser))
			if lastErr == nil {
				t.Logf("dbtest: mariadbd on 127.0.0.1:%d, data in %s", port, data)
				return s, nil
			}
		}
		s.admin.Close()
		p.stop(syscall.SIGKILL, 5*time.Second)
	}
	os.RemoveAll(dir)
	return nil, lastErr
}

func (s *mariaServer) url(db, user, password string) string {
	if user == "" {
		user, password = mariadbUser, mariadbPasswd
	}
	return fmt.Sprintf("mysql://%s:%s@tcp(127.0.0.1:%d)/%s", user, password, s.port, db)
}

func (s *mariaServer) newDatabase(t testing.TB) string {
	t.Helper()
	name := nextName()
	if err := s.exec("", "CREATE DATABASE `"+name+"` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"); err != nil {
		t.Fatalf("dbtest: create mariadb database: %v", err)
	}
	return name
}

func (s *mariaServer) exec(db string, stmts ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := s.admin.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if db != "" {
		if _, err := conn.ExecContext(ctx, "USE `"+db+"`"); err != nil {
			return err
		}
	}
	for _, q := range stmts {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

func (s *mariaServer) stop() {
	if s.admin != nil {
		s.admin.Close()
	}
	s.proc.stop(syscall.SIGTERM, 20*time.Second)
	os.RemoveAll(s.dir)
}
