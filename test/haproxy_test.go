//go:build integration

package test

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/testenv/apptest"
)

// This file is a minimal real-HAProxy starter for the zero-downtime tests:
// HAProxy from Debian in the root namespace, in front of the fleet's app
// port on every host's namespace address. startHAProxy, backendServer and
// haproxyFront's URL, Socket and Backend mirror internal/testenv/haproxytest
// (Start, Server, HAProxy) and its haproxy.cfg, so that swapping to it once
// it lands changes newLBFleet alone; hapStats reads HAProxy's view through
// the runtime socket of either.

// haproxyBin is Debian's HAProxy (make deps installs it).
const haproxyBin = "/usr/sbin/haproxy"

// Health checking as the tests configure it: a server is UP after rise
// good checks inter apart, DOWN after fall bad ones.
const (
	hapInter = 200 * time.Millisecond
	hapRise  = 2
	hapFall  = 2
)

// backendServer is one server line: its name (the host's member name in
// drover.yml) and the address HAProxy connects to (haproxytest.Server).
type backendServer struct {
	Name string
	Addr string // ip:port
}

// haproxyFront is a running HAProxy (haproxytest.HAProxy).
type haproxyFront struct {
	URL     string // http://127.0.0.1:PORT of the frontend
	Socket  string // the runtime API socket, level admin
	Backend string // the backend holding the fleet's servers
	cfg     string
	log     string
}

// startHAProxy runs HAProxy with a frontend on a free 127.0.0.1 port and
// one backend of servers, health-checked with GET /healthz, and an admin
// socket. It stops HAProxy when the test ends, and skips the test when
// HAProxy is not installed.
func startHAProxy(t testing.TB, backend string, servers []backendServer) *haproxyFront {
	t.Helper()
	if _, err := os.Stat(haproxyBin); err != nil {
		t.Skipf("haproxy not installed (make deps installs it from Debian): %v", err)
	}
	// A unix socket path must stay under 108 bytes: not in a test's
	// TempDir, whose name grows with the test's.
	dir, err := os.MkdirTemp("", "drover-hap-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h := &haproxyFront{Socket: filepath.Join(dir, "admin.sock"), Backend: backend, cfg: filepath.Join(dir, "haproxy.cfg"), log: filepath.Join(dir, "haproxy.log")}
	var last error
	for range 3 { // another process may take the free port before HAProxy binds it
		port := apptest.FreePorts(t, 1)[0]
		h.URL = fmt.Sprintf("http://127.0.0.1:%d", port)
		writeFile(t, h.cfg, haproxyConfig(port, h.Socket, backend, servers))
		if last = h.start(t, port); last == nil {
			return h
		}
		if !strings.Contains(last.Error(), "cannot bind") {
			break
		}
	}
	t.Fatalf("haproxy: %v", last)
	return nil
}

// haproxyConfig is haproxytest's: one frontend, one backend health
// checked every hapInter, two connection retries, redispatched to another
// server.
func haproxyConfig(port int, socket, backend string, servers []backendServer) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# written by drover's zero-downtime tests
global
  stats socket %s mode 600 level admin
  stats timeout 30s

defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option redispatch
  retries 2

frontend web
  bind 127.0.0.1:%d
  default_backend %s

backend %s
  balance roundrobin
  option httpchk GET /healthz
  default-server check inter %[5]dms fastinter %[5]dms downinter %[5]dms rise %[6]d fall %[7]d
`, socket, port, backend, backend, hapInter.Milliseconds(), hapRise, hapFall)
	for _, s := range servers {
		fmt.Fprintf(&b, "  server %s %s\n", s.Name, s.Addr)
	}
	return b.String()
}

// start runs HAProxy in the foreground and waits until its socket and
// frontend answer.
func (h *haproxyFront) start(t testing.TB, port int) error {
	logf, err := os.Create(h.log)
	if err != nil {
		return err
	}
	defer logf.Close()
	_ = os.Remove(h.Socket)
	cmd := exec.Command(haproxyBin, "-db", "-f", h.cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Logf("haproxy (pid %d) did not exit after SIGKILL", cmd.Process.Pid)
		}
	}
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		_, serr := h.stats().admin("show info")
		c, derr := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if derr == nil {
			c.Close()
		}
		if serr == nil && derr == nil {
			break
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(h.log)
			return fmt.Errorf("exited before it was ready:\n%s\nconfig %s:\n%s", b, h.cfg, mustRead(h.cfg))
		case <-deadline.C:
			stop()
			b, _ := os.ReadFile(h.log)
			return fmt.Errorf("not ready after 20s (socket: %v, frontend: %v):\n%s", serr, derr, b)
		case <-tick.C:
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			if st, err := h.stats().admin("show stat"); err == nil {
				t.Logf("haproxy show stat at the end:\n%s", st)
			}
			b, _ := os.ReadFile(h.log)
			t.Logf("haproxy log (%s):\n%s", h.log, b)
		}
		stop()
	})
	return nil
}

func mustRead(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// stats returns the view of h through its runtime socket.
func (h *haproxyFront) stats() hapStats { return hapStats{Socket: h.Socket, Backend: h.Backend} }

// hapStats reads one backend's state through HAProxy's runtime socket.
type hapStats struct {
	Socket  string
	Backend string
}

// admin sends one command to the runtime API and returns its answer.
func (h hapStats) admin(command string) (string, error) {
	c, err := net.DialTimeout("unix", h.Socket, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", command); err != nil {
		return "", err
	}
	var b strings.Builder
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		b.WriteString(sc.Text() + "\n")
	}
	return b.String(), sc.Err()
}

// serverStat is one backend server as HAProxy's `show stat` reports it.
type serverStat struct {
	Name   string
	Status string // UP, DOWN, DRAIN, MAINT, "UP 1/2", "DOWN 1/2", ...
	Weight int
	Active int // scur: current sessions
	// Retries counts the connections HAProxy retried (wretr) or sent to
	// another server (wredis) after one failed: failures its retries hid
	// from clients, which a drained server never causes.
	Retries int
}

// Serving reports whether HAProxy sends it new requests: UP and not
// drained (a drained server's status reads DRAIN, its weight 0).
func (s serverStat) Serving() bool { return s.Status == "UP" && s.Weight > 0 }

// servers returns the backend's servers by name.
func (h hapStats) servers(t testing.TB) map[string]serverStat {
	t.Helper()
	out, err := h.admin("show stat")
	if err != nil {
		t.Fatalf("haproxy show stat: %v", err)
	}
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(out, "# ")))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil || len(rows) == 0 {
		t.Fatalf("haproxy show stat: %v\n%s", err, out)
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[name] = i
	}
	res := map[string]serverStat{}
	for _, row := range rows[1:] {
		if len(row) < len(rows[0])-1 || row[col["pxname"]] != h.Backend {
			continue
		}
		name := row[col["svname"]]
		if name == "BACKEND" || name == "FRONTEND" {
			continue
		}
		w, _ := strconv.Atoi(row[col["weight"]])
		cur, _ := strconv.Atoi(row[col["scur"]])
		retr, _ := strconv.Atoi(row[col["wretr"]])
		redis, _ := strconv.Atoi(row[col["wredis"]])
		res[name] = serverStat{Name: name, Status: row[col["status"]], Weight: w, Active: cur, Retries: retr + redis}
	}
	return res
}

// waitServers waits until every server satisfies cond.
func (h hapStats) waitServers(t testing.TB, within time.Duration, what string, cond func(serverStat) bool) {
	t.Helper()
	var last map[string]serverStat
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		last = h.servers(t)
		ok := len(last) > 0
		for _, s := range last {
			ok = ok && cond(s)
		}
		if ok {
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("haproxy: timed out after %s waiting for %s; servers %v", within, what, last)
		case <-tick.C:
		}
	}
}

// retries sums Retries over the backend's servers.
func (h hapStats) retries(t testing.TB) int {
	t.Helper()
	n := 0
	for _, s := range h.servers(t) {
		n += s.Retries
	}
	return n
}
