package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// appBin is the test web app (testdata/app), built once by TestMain.
var appBin string

func TestMain(m *testing.M) {
	switch os.Getenv("SERVICE_TEST_HELPER") {
	case "start":
		os.Exit(helperStart())
	case "supervise":
		os.Exit(helperSupervise())
	case "restart":
		os.Exit(helperRestart())
	}
	dir, err := os.MkdirTemp("", "service-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	appBin = filepath.Join(dir, "app")
	build := exec.Command("go", "build", "-o", appBin, "./testdata/app")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build test app:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// helperStart runs in a child test binary: it starts the service the
// environment describes and exits, as drover does at the end of an SSH
// session.
func helperStart() int {
	port, _ := strconv.Atoi(os.Getenv("HELPER_PORT"))
	m := &Manager{SharedDir: os.Getenv("HELPER_SHARED"), Env: []string{"DROVER_RELEASE=r1"}}
	s := Spec{Name: "web", Start: "exec " + os.Getenv("HELPER_APP")}
	if err := m.Start(context.Background(), s, os.Getenv("HELPER_RELEASE"), port); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

type fixture struct {
	m       *Manager
	shared  string
	release string
}

// newFixture returns a Manager on a fresh deploy root whose shared dir does
// not exist yet, and kills whatever its PID files name when the test ends.
func newFixture(t testing.TB) *fixture {
	t.Helper()
	root := t.TempDir()
	f := &fixture{shared: filepath.Join(root, "shared"), release: filepath.Join(root, "releases", "r1")}
	if err := os.MkdirAll(f.release, 0o755); err != nil {
		t.Fatal(err)
	}
	f.m = &Manager{
		SharedDir: f.shared,
		Env:       []string{"DROVER_RELEASE=r1"},
		Logger:    slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	t.Cleanup(func() { killAll(filepath.Join(f.shared, "pids")) })
	return f
}

func (f *fixture) newRelease(t testing.TB, name string) string {
	t.Helper()
	dir := filepath.Join(filepath.Dir(f.release), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// killAll SIGKILLs the process group of every PID file in dir.
func killAll(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if rec, err := readRecord(filepath.Join(dir, e.Name())); err == nil && alive(rec) {
			_ = syscall.Kill(-rec.PID, syscall.SIGKILL)
			_, _ = waitUntil(context.Background(), 5*time.Second, func() bool { return exited(rec) })
		}
	}
}

func webSpec(ports ...int) Spec {
	return Spec{
		Name:   "web",
		Start:  "exec " + appBin,
		Ports:  ports,
		Health: &Health{HTTP: "http://127.0.0.1:{{port}}/healthz", Timeout: 10 * time.Second, Interval: 20 * time.Millisecond},
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// whoami asks the app on port for its pid, working dir and DROVER_RELEASE.
func whoami(t *testing.T, port int) (pid int, dir, release string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/whoami", port))
	if err != nil {
		t.Fatalf("whoami on port %d: %v", port, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	f := strings.Fields(string(body))
	if len(f) != 3 {
		t.Fatalf("whoami on port %d: %q", port, body)
	}
	pid, _ = strconv.Atoi(f[0])
	return pid, f[1], f[2]
}

// statField returns field n (1-based, as in proc(5)) of /proc/<pid>/stat.
func statField(t *testing.T, pid, n int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("stat of pid %d: %v", pid, err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	v, _ := strconv.Atoi(f[n-3])
	return v
}

// gone reports whether pid no longer runs (missing, or a zombie).
func gone(pid int) bool {
	st, err := readStat(pid)
	return err != nil || st.state == 'Z'
}

func mustRecord(t *testing.T, path string) *record {
	t.Helper()
	rec, err := readRecord(path)
	if err != nil {
		t.Fatalf("read PID file: %v", err)
	}
	return rec
}

func TestStartStatusStop(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	p1, p2 := freePort(t), freePort(t)
	s := webSpec(p1, p2)

	if err := f.m.StartAll(ctx, s, f.release); err != nil {
		t.Fatal(err)
	}
	pids := map[int]int{}
	for _, port := range s.Ports {
		if err := f.m.Check(ctx, s, port); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(f.shared, "pids", fmt.Sprintf("web-%d.pid", port))
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("PID file: %v", err)
		}
		first, _, _ := strings.Cut(string(data), "\n")
		pid, err := strconv.Atoi(first)
		if err != nil {
			t.Fatalf("first line of PID file is not a pid: %q", data)
		}
		gotPID, dir, rel := whoami(t, port)
		if gotPID != pid || dir != f.release || rel != "r1" {
			t.Errorf("port %d: app says pid %d dir %s DROVER_RELEASE %s; want pid %d dir %s r1", port, gotPID, dir, rel, pid, f.release)
		}
		if sid := statField(t, pid, 6); sid != pid || sid == statField(t, os.Getpid(), 6) {
			t.Errorf("port %d: session %d; want its own session %d", port, sid, pid)
		}
		pids[port] = pid
	}

	st := f.m.Status(s)
	if len(st) != 2 {
		t.Fatalf("Status: %d entries, want 2: %+v", len(st), st)
	}
	for _, p := range st {
		if !p.Running || p.State != "running" || p.PID != pids[p.Port] || p.ReleaseDir != f.release ||
			time.Since(p.Since) > time.Minute || p.Log != filepath.Join(f.shared, "log", fmt.Sprintf("web-%d.log", p.Port)) {
			t.Errorf("Status: %+v; want running pid %d from %s", p, pids[p.Port], f.release)
		}
	}

	err := f.m.Start(ctx, s, f.release, p1)
	if !errors.Is(err, ErrAlreadyRunning) || !strings.Contains(err.Error(), "use restart") {
		t.Errorf("second Start: %v; want ErrAlreadyRunning saying to use restart", err)
	}

	if err := f.m.StopAll(ctx, s); err != nil {
		t.Fatal(err)
	}
	for port, pid := range pids {
		if !gone(pid) {
			t.Errorf("port %d: pid %d still runs after Stop", port, pid)
		}
		if _, err := os.Stat(f.m.PIDFile("web", port)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("port %d: PID file left after Stop: %v", port, err)
		}
	}
	for _, p := range f.m.Status(s) {
		if p.Running || p.State != "stopped" {
			t.Errorf("Status after stop: %+v", p)
		}
	}
	if err := f.m.StopAll(ctx, s); err != nil {
		t.Errorf("Stop of a stopped service: %v", err)
	}
}

func TestRestartSwapsProcesses(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	s := webSpec(freePort(t), freePort(t))
	if err := f.m.Restart(ctx, s, f.release); err != nil { // nothing runs yet: a plain start
		t.Fatal(err)
	}
	old := map[int]int{}
	for _, p := range f.m.Status(s) {
		old[p.Port] = p.PID
	}

	next := f.newRelease(t, "r2")
	if err := f.m.Restart(ctx, s, next); err != nil {
		t.Fatal(err)
	}
	for _, p := range f.m.Status(s) {
		if !p.Running || p.ReleaseDir != next || p.PID == old[p.Port] {
			t.Errorf("after restart: %+v; want a new pid (old %d) from %s", p, old[p.Port], next)
		}
		if pid, dir, _ := whoami(t, p.Port); pid != p.PID || dir != next {
			t.Errorf("port %d answered by pid %d from %s; want %d from %s", p.Port, pid, dir, p.PID, next)
		}
		if !gone(old[p.Port]) {
			t.Errorf("old pid %d on port %d still runs", old[p.Port], p.Port)
		}
	}
}

func TestRestartHealthFailure(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	f.m.Env = append(f.m.Env, "APP_UNHEALTHY=1")
	p1, p2 := freePort(t), freePort(t)
	s := webSpec(p1, p2)
	s.Health.Timeout = 500 * time.Millisecond

	err := f.m.Restart(ctx, s, f.release)
	var he *HealthError
	if !errors.As(err, &he) {
		t.Fatalf("Restart: %v; want a *HealthError", err)
	}
	if he.Service != "web" || he.Port != p1 || !errors.Is(err, ErrUnhealthyStatus) || he.Attempts < 2 {
		t.Errorf("HealthError %+v; want web port %d, unhealthy status, retried", he, p1)
	}
	msg := err.Error()
	for _, want := range []string{fmt.Sprintf("port %d", p1), "500 Internal Server Error", "database unreachable", "listening on"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not say %q:\n%s", want, msg)
		}
	}
	if _, err := os.Stat(f.m.PIDFile("web", p2)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("port %d was started after port %d failed its health check", p2, p1)
	}
}

func TestHealthFailsFastWhenProcessDies(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	s := webSpec(freePort(t))
	s.Start = "echo missing config file >&2; exit 3"
	s.Health.Timeout = 30 * time.Second

	began := time.Now()
	err := f.m.Restart(ctx, s, f.release)
	var he *HealthError
	if !errors.As(err, &he) || !errors.Is(err, ErrExited) {
		t.Fatalf("Restart: %v; want a *HealthError for an exited process", err)
	}
	if time.Since(began) > 15*time.Second {
		t.Errorf("took %s; a dead process should fail the check before its timeout", time.Since(began))
	}
	if !strings.Contains(strings.Join(he.Tail, "\n"), "missing config file") {
		t.Errorf("log tail %q lacks the process's last words", he.Tail)
	}
}

func TestCheckRetriesWhileBooting(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	f.m.Env = append(f.m.Env, "APP_BOOT_DELAY=400ms")
	s := webSpec(freePort(t))
	if err := f.m.Start(ctx, s, f.release, s.Ports[0]); err != nil {
		t.Fatal(err)
	}
	if err := f.m.Check(ctx, s, s.Ports[0]); err != nil {
		t.Fatalf("Check of a booting app: %v", err)
	}
}

func TestCheckReportsLastError(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	port := freePort(t) // nothing listens there
	s := webSpec(port)
	s.Health.Timeout = 300 * time.Millisecond
	err := f.m.Check(ctx, s, port)
	var he *HealthError
	if !errors.As(err, &he) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Check: %v; want a *HealthError whose last error is connection refused", err)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := f.m.Check(cctx, s, port); !errors.Is(err, context.Canceled) {
		t.Errorf("Check with a cancelled context: %v", err)
	}
}

func TestCommandHealth(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	port := freePort(t)
	s := webSpec(port)
	s.Health = &Health{Command: `test -f "ready-{{port}}" && test "$PORT" = {{port}}`, Timeout: 300 * time.Millisecond, Interval: 20 * time.Millisecond}
	if err := f.m.Start(ctx, s, f.release, port); err != nil {
		t.Fatal(err)
	}
	err := f.m.Check(ctx, s, port)
	var he *HealthError
	if !errors.As(err, &he) || !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("Check before ready: %v; want a *HealthError with exit status 1", err)
	}
	if err := os.WriteFile(filepath.Join(f.release, fmt.Sprintf("ready-%d", port)), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.m.Check(ctx, s, port); err != nil {
		t.Fatalf("Check run in the release dir: %v", err)
	}
}

func TestStalePIDFile(t *testing.T) {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	self, err := readStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		content func(path string) error
	}{
		{"process gone", func(path string) error {
			return writeRecord(path, &record{Schema: recordSchema, PID: dead.Process.Pid, StartTicks: 1, BootID: bootID(), Service: "web"})
		}},
		{"pid reused", func(path string) error { // our own pid, started at another time
			return writeRecord(path, &record{Schema: recordSchema, PID: os.Getpid(), StartTicks: self.startTicks + 1, BootID: bootID(), Service: "web"})
		}},
		{"other boot", func(path string) error {
			return writeRecord(path, &record{Schema: recordSchema, PID: os.Getpid(), StartTicks: self.startTicks, BootID: "not-this-boot", Service: "web"})
		}},
		{"garbage", func(path string) error { return os.WriteFile(path, []byte("hello\n"), 0o644) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			ctx := testCtx(t)
			port := freePort(t)
			s := webSpec(port)
			path := f.m.PIDFile("web", port)
			write := func() {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := tc.content(path); err != nil {
					t.Fatal(err)
				}
			}

			write()
			if st := f.m.Status(s); st[0].Running || st[0].State != "stale" {
				t.Errorf("Status: %+v; want stale, not running", st[0])
			}
			if err := f.m.Stop(ctx, s, port); err != nil { // must not signal anyone, least of all us
				t.Errorf("Stop: %v", err)
			}
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Stop left the stale PID file: %v", err)
			}

			write()
			if err := f.m.Start(ctx, s, f.release, port); err != nil {
				t.Fatalf("Start over a stale PID file: %v", err)
			}
			if err := f.m.Check(ctx, s, port); err != nil {
				t.Fatal(err)
			}
			if pid, _, _ := whoami(t, port); mustRecord(t, path).PID != pid {
				t.Errorf("PID file names %d, app is %d", mustRecord(t, path).PID, pid)
			}
		})
	}
}

func TestSurvivesParent(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	port := freePort(t)
	helper := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), "SERVICE_TEST_HELPER=start", "HELPER_SHARED="+f.shared,
		"HELPER_RELEASE="+f.release, "HELPER_APP="+appBin, "HELPER_PORT="+strconv.Itoa(port))
	if out, err := helper.CombinedOutput(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	// The drover that started the service has exited.
	s := webSpec(port)
	if err := f.m.Check(ctx, s, port); err != nil {
		t.Fatalf("service did not survive its parent: %v", err)
	}
	rec := mustRecord(t, f.m.PIDFile("web", port))
	if ppid := statField(t, rec.PID, 4); ppid == helper.Process.Pid {
		t.Errorf("parent is still the exited helper %d", ppid)
	}
	if sid := statField(t, rec.PID, 6); sid != rec.PID {
		t.Errorf("session %d; want its own session %d", sid, rec.PID)
	}
	// Another drover process stops it by its PID file.
	if err := f.m.Stop(ctx, s, port); err != nil {
		t.Fatal(err)
	}
	if !gone(rec.PID) {
		t.Errorf("pid %d runs after Stop", rec.PID)
	}
}

func TestStopKillsAfterGrace(t *testing.T) {
	cases := []struct {
		name      string
		env       string
		wantKill  bool
		stopGrace time.Duration
	}{
		{"exits on SIGTERM", "APP_IGNORE_TERM=0", false, 20 * time.Second},
		{"ignores SIGTERM", "APP_IGNORE_TERM=1", true, 300 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			ctx := testCtx(t)
			f.m.Env = append(f.m.Env, tc.env)
			port := freePort(t)
			s := webSpec(port)
			s.StopGrace = tc.stopGrace
			s.Start = appBin // no exec: sh stays the group leader, the app is its child
			if err := f.m.Start(ctx, s, f.release, port); err != nil {
				t.Fatal(err)
			}
			if err := f.m.Check(ctx, s, port); err != nil {
				t.Fatal(err)
			}
			app, _, _ := whoami(t, port)
			began := time.Now()
			if err := f.m.Stop(ctx, s, port); err != nil {
				t.Fatal(err)
			}
			took := time.Since(began)
			if !gone(app) {
				t.Errorf("app pid %d runs after Stop", app)
			}
			logText, _ := os.ReadFile(f.m.LogFile("web", port))
			stopped := strings.Contains(string(logText), "stopped")
			if tc.wantKill && (took < tc.stopGrace || stopped) {
				t.Errorf("stop took %s (grace %s), log says stopped: %v; want SIGKILL after the grace", took, tc.stopGrace, stopped)
			}
			if !tc.wantKill && (took >= tc.stopGrace || !stopped) {
				t.Errorf("stop took %s, log says stopped: %v; want a clean exit on SIGTERM\n%s", took, stopped, logText)
			}
		})
	}
}

func TestLogsAppended(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	port := freePort(t)
	s := webSpec(port)
	logPath := f.m.LogFile("web", port)
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(logPath, []byte("line from last week\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := f.m.Restart(ctx, s, f.release); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.m.Stop(ctx, s, port); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	if !strings.HasPrefix(text, "line from last week\n") || strings.Count(text, "listening on") != 2 || strings.Count(text, "stopped") != 2 {
		t.Errorf("log was not appended to by both runs:\n%s", text)
	}
}

func TestPortlessService(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	s := Spec{Name: "worker", Start: `echo "worker PORT=[$PORT]"; exec sleep 300`}
	if err := f.m.StartAll(ctx, s, f.release); err != nil {
		t.Fatal(err)
	}
	st := f.m.Status(s)
	if len(st) != 1 || !st[0].Running || st[0].Port != 0 {
		t.Fatalf("Status: %+v; want one running process, port 0", st)
	}
	if _, err := os.Stat(filepath.Join(f.shared, "pids", "worker.pid")); err != nil {
		t.Errorf("PID file of a portless service: %v", err)
	}
	logPath := filepath.Join(f.shared, "log", "worker.log")
	logged := func() bool {
		data, _ := os.ReadFile(logPath)
		return strings.Contains(string(data), "worker PORT=")
	}
	if ok, err := waitUntil(ctx, 10*time.Second, logged); !ok || err != nil {
		t.Fatalf("worker wrote nothing to %s (%v)", logPath, err)
	}
	if data, _ := os.ReadFile(logPath); !strings.Contains(string(data), "worker PORT=[]") {
		t.Errorf("worker log %q; want no PORT for a portless service", data)
	}
	if err := f.m.StopAll(ctx, s); err != nil {
		t.Fatal(err)
	}
}

func TestStartErrors(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	cases := []struct {
		name    string
		spec    Spec
		release string
		want    string
	}{
		{"bad name", Spec{Name: "../web", Start: "true"}, f.release, "bad service name"},
		{"no start", Spec{Name: "web"}, f.release, "neither start nor systemd"},
		{"missing release", webSpec(), filepath.Join(f.release, "nope"), "release dir"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := f.m.Start(ctx, tc.spec, tc.release, 0)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start: %v; want an error saying %q", err, tc.want)
			}
		})
	}
}

// recorder is a Runner that records systemctl command lines and answers
// like systemctl on a host where the unit is active.
type recorder struct{ calls []string }

func (r *recorder) run(_ context.Context, name string, args ...string) ([]byte, error) {
	r.calls = append(r.calls, name+" "+strings.Join(args, " "))
	switch args[0] {
	case "is-active":
		return []byte("active\n"), nil
	case "show":
		return []byte("MainPID=4242\nActiveEnterTimestamp=Mon 2026-01-05 10:00:00 UTC\n"), nil
	}
	return nil, nil
}

func TestSystemdCommands(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	rec := &recorder{}
	f.m.Run = rec.run
	s := Spec{Name: "worker", Systemd: "shop-worker.service", Start: "ignored"}
	if err := f.m.Start(ctx, s, f.release, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.m.Restart(ctx, s, f.release); err != nil {
		t.Fatal(err)
	}
	if err := f.m.Stop(ctx, s, 0); err != nil {
		t.Fatal(err)
	}
	st := f.m.Status(s)
	want := []string{
		"systemctl start shop-worker.service",
		"systemctl restart shop-worker.service",
		"systemctl stop shop-worker.service",
		"systemctl is-active shop-worker.service",
		"systemctl show --property=MainPID,ActiveEnterTimestamp shop-worker.service",
	}
	if strings.Join(rec.calls, "\n") != strings.Join(want, "\n") {
		t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(rec.calls, "\n"), strings.Join(want, "\n"))
	}
	if len(st) != 1 || !st[0].Running || st[0].PID != 4242 || st[0].Unit != "shop-worker.service" || st[0].Since.IsZero() {
		t.Errorf("Status: %+v", st)
	}
	if _, err := os.Stat(filepath.Join(f.shared, "pids")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a systemd service made a pids dir: %v", err)
	}
}

func TestSystemdReal(t *testing.T) {
	if _, err := exec.LookPath("systemctl"); err != nil {
		t.Skip("systemctl is not installed")
	}
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		t.Skip("systemd is not running on this machine (no /run/systemd/system)")
	}
	f := newFixture(t)
	ctx := testCtx(t)
	s := Spec{Name: "nope", Systemd: "drover-test-no-such-unit.service"}
	err := f.m.Start(ctx, s, f.release, 0)
	if err == nil || !strings.Contains(err.Error(), "drover-test-no-such-unit.service") {
		t.Errorf("starting a missing unit: %v; want systemctl's complaint", err)
	}
	if st := f.m.Status(s); st[0].Running {
		t.Errorf("Status of a missing unit: %+v", st[0])
	}
}

// TestCancelledSessionSparesService: a service started by a drover that
// runs in a cancelled SSH session outlives the cancel. Push mode stops a
// cancelled command by killing every process whose environment carries
// the session's DROVER_RUN_ID (ssh.Client.Run); the service must not
// carry it, nor any other control or session variable of drover's.
func TestCancelledSessionSparesService(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	port := freePort(t)
	const token = "0123456789abcdef01234567"
	helper := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), "SERVICE_TEST_HELPER=start", "HELPER_SHARED="+f.shared,
		"HELPER_RELEASE="+f.release, "HELPER_APP="+appBin, "HELPER_PORT="+strconv.Itoa(port),
		"DROVER_RUN_ID="+token, "DROVER_TOKEN=secret", "DROVER_CRASH_AT=never",
		"SSH_CONNECTION=10.0.0.1 50000 10.0.0.2 22", "SSH_CLIENT=10.0.0.1 50000 22", "SSH_AUTH_SOCK=/tmp/agent.sock")
	if out, err := helper.CombinedOutput(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	s := webSpec(port)
	if err := f.m.Check(ctx, s, port); err != nil {
		t.Fatalf("service did not start: %v", err)
	}
	rec := mustRecord(t, f.m.PIDFile("web", port))
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", rec.PID))
	if err != nil {
		t.Fatal(err)
	}
	vars := strings.Split(string(environ), "\x00")
	for _, v := range vars {
		name, _, _ := strings.Cut(v, "=")
		switch name {
		case "DROVER_RUN_ID", "DROVER_TOKEN", "DROVER_CRASH_AT", "SSH_CONNECTION", "SSH_CLIENT", "SSH_AUTH_SOCK":
			t.Errorf("service inherited %s", v)
		}
	}
	if !slices.Contains(vars, "DROVER_RELEASE=r1") || !slices.Contains(vars, "PORT="+strconv.Itoa(port)) {
		t.Errorf("service lacks the variables drover gives it: %q", vars)
	}
	// What ssh.Client does to a cancelled session's processes.
	kill := exec.CommandContext(ctx, "/bin/sh", "-c", `for f in $(grep -lzx 'DROVER_RUN_ID=`+token+`' /proc/[0-9]*/environ 2>/dev/null); do p=${f#/proc/}; kill -KILL "${p%/environ}" 2>/dev/null; done; true`)
	if out, err := kill.CombinedOutput(); err != nil {
		t.Fatalf("kill by run id: %v\n%s", err, out)
	}
	if gone(rec.PID) {
		t.Fatalf("cancelling the session killed the service (pid %d)", rec.PID)
	}
	if err := f.m.Check(ctx, s, port); err != nil {
		t.Fatalf("service does not serve after the cancel: %v", err)
	}
}

// TestSystemdSocketUnit: a systemd service with socket: true is restarted
// only while its .socket unit is active; otherwise the error says how to
// install the unit, and nothing is restarted. Status shows the socket unit.
func TestSystemdSocketUnit(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	s := Spec{Name: "web", Systemd: "shop-web.service", Socket: true}
	socketState := "inactive"
	var calls []string
	f.m.Run = func(_ context.Context, name string, args ...string) ([]byte, error) {
		calls = append(calls, name+" "+strings.Join(args, " "))
		switch {
		case args[0] == "is-active" && args[1] == "shop-web.socket":
			if socketState != "active" {
				return []byte(socketState + "\n"), errors.New("exit status 3")
			}
			return []byte("active\n"), nil
		case args[0] == "is-active":
			return []byte("active\n"), nil
		case args[0] == "show" && args[2] == "shop-web.socket":
			return []byte("Listen=127.0.0.1:8000 (Stream)\n"), nil
		}
		return nil, nil
	}
	err := f.m.Restart(ctx, s, f.release)
	if err == nil || !strings.Contains(err.Error(), "systemctl enable --now shop-web.socket") || !strings.Contains(err.Error(), `"inactive"`) {
		t.Errorf("restart without the socket unit: %v; want how to install shop-web.socket", err)
	}
	if slices.Contains(calls, "systemctl restart shop-web.service") {
		t.Errorf("restarted without the socket unit: %q", calls)
	}
	socketState = "active"
	calls = nil
	if err := f.m.Restart(ctx, s, f.release); err != nil {
		t.Fatal(err)
	}
	if want := []string{"systemctl is-active shop-web.socket", "systemctl restart shop-web.service"}; !slices.Equal(calls, want) {
		t.Errorf("commands %q; want %q", calls, want)
	}
	st := f.m.Status(s)
	if len(st) != 1 || st[0].Supervisor == nil || !st[0].Supervisor.Running || !slices.Equal(st[0].Supervisor.Sockets, []string{"127.0.0.1:8000 (Stream)"}) || st[0].Restart != RestartUnitSocket {
		t.Errorf("Status: %+v (socket unit %+v)", st, st[0].Supervisor)
	}
}
