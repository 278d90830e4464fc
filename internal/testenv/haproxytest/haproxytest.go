// Package haproxytest starts a real HAProxy (Debian's haproxy package,
// installed on first use when missing and the test runs as root) in front
// of servers a test gives, for tests of load balancer steps:
//
//	hp := haproxytest.Start(t, haproxytest.Options{Servers: []haproxytest.Server{
//		{Name: "web1", Addr: "127.0.0.1:8001"},
//		{Name: "web2", Addr: "10.213.0.3:8000"}, // any host:port HAProxy can reach
//	}})
//	http.Get(hp.URL)                            // through the frontend
//	hp.Command(t, "set server app/web1 state drain")
//
// HAProxy runs in the foreground (-db, no master process) with one HTTP
// frontend on a free loopback port, one backend (Options.Backend, default
// "app") whose servers are health checked with `option httpchk GET
// /healthz` every 200ms (rise 2, fall 2), and an admin runtime socket
// (unix, level admin); Options.TCPSocket adds one on 127.0.0.1 for the
// tcp:HOST:PORT form. t.Cleanup stops it.
package haproxytest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/testenv/debpkg"
)

// Binary is the HAProxy the fixture runs.
const Binary = "/usr/sbin/haproxy"

// Server is one backend server: its name in HAProxy (the member name
// drover uses) and the host:port HAProxy sends requests and checks to.
type Server struct {
	Name string
	Addr string
}

// Options describe the HAProxy to start. Zero values take the defaults.
type Options struct {
	// Backend is the backend's name; default "app".
	Backend string
	// Servers are the backend's servers, in order.
	Servers []Server
	// HealthPath is the path of the HTTP health check; default /healthz.
	HealthPath string
	// Inter is the health check interval; default 200ms. rise 2, fall 2.
	Inter time.Duration
	// TCPSocket adds an admin runtime socket on 127.0.0.1 (HAProxy.TCPSocket).
	TCPSocket bool
	// NoRetries turns off HAProxy's retries and redispatch: a connection a
	// server refuses fails the client's request instead of being hidden by
	// a retry on another server.
	NoRetries bool
}

// HAProxy is a running HAProxy.
type HAProxy struct {
	// URL is the frontend, like http://127.0.0.1:41234.
	URL string
	// Socket is the path of the admin runtime socket (unix, level admin).
	Socket string
	// TCPSocket is "tcp:127.0.0.1:PORT" when Options.TCPSocket asked for
	// one, else "".
	TCPSocket string
	// Backend is the backend's name.
	Backend string
	// Config is the path of the generated haproxy.cfg.
	Config string

	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// Start starts HAProxy and waits until its socket answers and its frontend
// accepts connections. It fails the test when it cannot.
func Start(t testing.TB, opts Options) *HAProxy {
	t.Helper()
	if err := debpkg.Ensure("haproxy", func() bool { return isExecutable(Binary) }, "service", "haproxy", "stop"); err != nil {
		t.Skipf("haproxytest: %v", err)
	}
	if opts.Backend == "" {
		opts.Backend = "app"
	}
	if opts.HealthPath == "" {
		opts.HealthPath = "/healthz"
	}
	if opts.Inter == 0 {
		opts.Inter = 200 * time.Millisecond
	}
	// A socket path must fit in sun_path (108 bytes); t.TempDir can be long.
	dir, err := os.MkdirTemp("", "haproxytest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var last error
	for attempt := 0; attempt < 3; attempt++ { // a free port may be taken before HAProxy binds it
		h, err := start(dir, opts)
		if err == nil {
			t.Cleanup(h.Stop)
			return h
		}
		last = err
	}
	t.Fatalf("haproxytest: %v", last)
	return nil
}

func start(dir string, opts Options) (*HAProxy, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	h := &HAProxy{
		URL:     fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		Socket:  filepath.Join(dir, "admin.sock"),
		Backend: opts.Backend,
		Config:  filepath.Join(dir, "haproxy.cfg"),
		log:     filepath.Join(dir, "haproxy.log"),
		done:    make(chan struct{}),
	}
	os.Remove(h.Socket)
	if opts.TCPSocket {
		h.TCPSocket = fmt.Sprintf("tcp:127.0.0.1:%d", ports[1])
	}
	if err := os.WriteFile(h.Config, []byte(h.config(opts, ports)), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(h.log, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	h.cmd = exec.Command(Binary, "-db", "-f", h.Config)
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	h.cmd.Dir = dir
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := h.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", Binary, err)
	}
	go func() { _ = h.cmd.Wait(); close(h.done) }()
	if err := h.waitReady(10 * time.Second); err != nil {
		h.Stop()
		return nil, err
	}
	return h, nil
}

func (h *HAProxy) config(opts Options, ports []int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "global\n  stats socket %s mode 600 level admin\n", h.Socket)
	if h.TCPSocket != "" {
		fmt.Fprintf(&b, "  stats socket ipv4@127.0.0.1:%d level admin\n", ports[1])
	}
	b.WriteString("  stats timeout 30s\n\n")
	retry := "  option redispatch\n  retries 2\n"
	if opts.NoRetries {
		retry = "  retries 0\n"
	}
	b.WriteString("defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n" + retry + "\n")
	fmt.Fprintf(&b, "frontend fe\n  bind 127.0.0.1:%d\n  default_backend %s\n\n", ports[0], opts.Backend)
	inter := opts.Inter.Milliseconds()
	fmt.Fprintf(&b, "backend %s\n  balance roundrobin\n  option httpchk GET %s\n", opts.Backend, opts.HealthPath)
	fmt.Fprintf(&b, "  default-server check inter %dms fastinter %dms downinter %dms rise 2 fall 2\n", inter, inter, inter)
	for _, s := range opts.Servers {
		fmt.Fprintf(&b, "  server %s %s\n", s.Name, s.Addr)
	}
	return b.String()
}

func (h *HAProxy) waitReady(within time.Duration) error {
	deadline := time.Now().Add(within)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		_, last = h.command("show info")
		if last == nil {
			var c net.Conn
			if c, last = net.DialTimeout("tcp", strings.TrimPrefix(h.URL, "http://"), time.Second); last == nil {
				c.Close()
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("haproxy not ready after %s: %v\n%s", within, last, h.Log())
		}
		select {
		case <-h.done:
			return fmt.Errorf("haproxy exited before it was ready:\n%s", h.Log())
		case <-tick.C:
		}
	}
}

// Command runs one runtime API command on the admin socket and returns
// HAProxy's answer; it fails the test when the socket does not answer.
func (h *HAProxy) Command(t testing.TB, cmd string) string {
	t.Helper()
	out, err := h.command(cmd)
	if err != nil {
		t.Fatalf("haproxy %q: %v", cmd, err)
	}
	return out
}

func (h *HAProxy) command(cmd string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", h.Socket)
	if err != nil {
		return "", err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(bufio.NewReader(c))
	return string(b), err
}

// Status returns the HAProxy status of server (UP, DOWN, DRAIN, MAINT,
// "UP 1/2" ...) from `show stat`, or "" when the backend has no such server.
func (h *HAProxy) Status(t testing.TB, server string) string {
	t.Helper()
	out := h.Command(t, "show stat")
	var status = -1
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, ",")
		if strings.HasPrefix(line, "# ") {
			for i, name := range f {
				if name == "status" {
					status = i
				}
			}
			continue
		}
		if status >= 0 && len(f) > status && f[0] == h.Backend && f[1] == server {
			return f[status]
		}
	}
	return ""
}

// WaitStatus waits until server's status is want or want plus a
// transition ("UP" matches "UP 1/2"), failing the test after within.
func (h *HAProxy) WaitStatus(t testing.TB, server, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		got := h.Status(t, server)
		if got == want || strings.HasPrefix(got, want+" ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy server %s/%s is %q after %s, want %q", h.Backend, server, got, within, want)
		}
		<-tick.C
	}
}

// Get sends one request through the frontend and returns its status and
// body.
func (h *HAProxy) Get(path string) (int, string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(h.URL + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Stop stops HAProxy and waits for it to exit; the sockets disappear.
// Tests call it to make the load balancer unreachable; t.Cleanup calls it
// again harmlessly.
func (h *HAProxy) Stop() {
	select {
	case <-h.done:
	default:
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.done:
		case <-time.After(5 * time.Second):
			_ = h.cmd.Process.Kill()
			<-h.done
		}
	}
	os.Remove(h.Socket)
}

// Log returns the end of HAProxy's output, for failure messages.
func (h *HAProxy) Log() string {
	b, _ := os.ReadFile(h.log)
	return debpkg.Tail(b, 3000)
}

func freePorts(n int) ([]int, error) {
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
