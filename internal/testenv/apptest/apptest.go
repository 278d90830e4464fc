// Package apptest gives tests a real app to deploy: a git repository
// holding drover's example web service (built once per test binary) and a
// drover.yml for it, with free ports and a private deploy_to.
package apptest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/testenv/gitrepo"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// ModuleRoot returns the root of drover's source tree.
func ModuleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

// HelloBinary builds examples/hello once per test binary and returns its path.
func HelloBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "drover-hello-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "hello")
		cmd := exec.Command("go", "build", "-o", binPath, "./examples/hello")
		cmd.Dir = ModuleRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build hello: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// FreePorts returns n TCP ports free on 127.0.0.1 right now.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// App is a deployable test app.
type App struct {
	Repo     *gitrepo.Repo
	DeployTo string
	Ports    []int
	Config   *config.File
	YAML     string
}

// Options shape the app's drover.yml.
type Options struct {
	Ports     int    // web ports (default 1); 0 ports with NoService
	Extra     string // YAML appended under hooks: (indented two spaces)
	Hosts     string // YAML list of hosts for environment "test" (default one local host)
	Shared    string // the shared: block (default dirs [log, public/uploads], files [.env])
	Keep      int
	DeployTo  string // default a temp dir
	NoService bool
	Socket    bool // the web service gets socket: true (drover holds its sockets)
}

// New makes a repository with the example app and a drover.yml, commits it
// on main and returns it with the parsed config. At the test's end it stops
// the app's services and fails the test for any other process left running
// under its directories (see KillLeftovers).
func New(t testing.TB, o Options) *App {
	t.Helper()
	// Every process left under the test's directories at its end (a
	// service, a hook's shell loop, one started by a killed drover) fails
	// the test and is killed. Registered first, so it runs after the
	// test's own cleanups, and before its directories are removed.
	testRoot := filepath.Dir(t.TempDir())
	t.Cleanup(func() { KillLeftovers(t, testRoot, o.DeployTo) })
	bin := HelloBinary(t)
	if o.Ports == 0 {
		o.Ports = 1
	}
	a := &App{Repo: gitrepo.New(t), DeployTo: o.DeployTo}
	if a.DeployTo == "" {
		a.DeployTo = filepath.Join(t.TempDir(), "srv")
	}
	if !o.NoService {
		a.Ports = FreePorts(t, o.Ports)
	}
	if o.Hosts == "" {
		o.Hosts = "      - {transport: local, roles: [web, db]}\n"
	}
	if o.Shared == "" {
		o.Shared = "shared:\n  dirs: [log, tmp/pids, public/uploads]\n  files: [.env]\n"
	}
	if o.Keep == 0 {
		o.Keep = 3
	}
	ports := make([]string, len(a.Ports))
	for i, p := range a.Ports {
		ports[i] = fmt.Sprint(p)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "app: hello\nrepo: %s\ndeploy_to: %s\nkeep_releases: %d\n%s", a.Repo.Dir, a.DeployTo, o.Keep, o.Shared)
	// A release whose tree holds BROKEN gets a server that exits at once;
	// one that holds HANG, a server that stays up and never listens.
	fmt.Fprintf(&b, "hooks:\n  prepare: [mkdir -p bin, cp %s bin/hello, 'if [ -f BROKEN ]; then printf \"#!/bin/sh\\nexit 3\\n\" > bin/hello; fi', 'if [ -f HANG ]; then printf \"#!/bin/sh\\nexec sleep 300\\n\" > bin/hello; fi']\n%s", bin, o.Extra)
	if !o.NoService {
		fmt.Fprintf(&b, "services:\n  web:\n    start: ./bin/hello --port {{port}}\n    ports: [%s]\n    health: {http: \"http://127.0.0.1:{{port}}/healthz\", timeout: 10s}\n    stop_grace: 5s\n", strings.Join(ports, ", "))
		if o.Socket {
			b.WriteString("    socket: true\n    bind: 127.0.0.1\n")
		}
	}
	fmt.Fprintf(&b, "environments:\n  test:\n    branch: main\n    hosts:\n%s", o.Hosts)
	a.YAML = b.String()
	cfg, err := config.Parse(filepath.Join(a.Repo.Dir, "drover.yml"), []byte(a.YAML))
	if err != nil {
		t.Fatalf("test app config: %v\n%s", err, a.YAML)
	}
	a.Config = cfg
	a.Repo.Commit("example app", map[string]string{"drover.yml": a.YAML, "README": "example\n", "log/.keep": ""})
	t.Cleanup(func() { a.StopServices(t) })
	return a
}

// WaitStarted waits until the process of the app's web service on port
// runs from release id (its PID file says so), failing the test after limit.
func (a *App) WaitStarted(t testing.TB, port int, id string, limit time.Duration) {
	t.Helper()
	pidFile := filepath.Join(a.DeployTo, "shared", "pids", fmt.Sprintf("web-%d.pid", port))
	deadline := time.Now().Add(limit)
	for {
		data, _ := os.ReadFile(pidFile)
		if strings.Contains(string(data), filepath.Join("releases", id)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("release %s's process on port %d did not start within %s; PID file: %q", id, port, limit, data)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// StopServices kills whatever the app's PID files name, so no test leaves
// a server behind.
func (a *App) StopServices(t testing.TB) {
	StopPIDs(filepath.Join(a.DeployTo, "shared", "pids"))
}

// StopPIDs SIGKILLs the process of every PID file in dir, and its process
// group: drover starts each service as `sh -c COMMAND` in its own session,
// and the PID file names the shell.
func StopPIDs(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var pid int
		if _, err := fmt.Sscan(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0]), &pid); err == nil && pid > 1 {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

var (
	droverOnce sync.Once
	droverPath string
	droverErr  error
)

// DroverBinary returns a drover binary for tests that need the real
// process: $DROVER_BIN when set (make builds one), else one built once per
// test binary.
func DroverBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("DROVER_BIN"); p != "" {
		return p
	}
	droverOnce.Do(func() {
		dir, err := os.MkdirTemp("", "drover-bin-")
		if err != nil {
			droverErr = err
			return
		}
		droverPath = filepath.Join(dir, "drover")
		cmd := exec.Command("go", "build", "-o", droverPath, "./cmd/drover")
		cmd.Dir = ModuleRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			droverErr = fmt.Errorf("build drover: %v\n%s", err, out)
		}
	})
	if droverErr != nil {
		t.Fatal(droverErr)
	}
	return droverPath
}
