package service

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/testenv/httpload"
)

// helperSupervise runs in a child test binary as `drover node supervise`.
func helperSupervise() int {
	err := Supervise(context.Background(), SupervisorConfig{PIDsDir: os.Getenv("HELPER_PIDS"), Service: os.Getenv("HELPER_SERVICE")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// testSupervisor runs the supervisor from this test binary.
func testSupervisor(pidsDir, service string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SERVICE_TEST_HELPER=supervise", "HELPER_PIDS="+pidsDir, "HELPER_SERVICE="+service)
	return cmd
}

// newSocketFixture is newFixture with the supervisor run by this test binary.
func newSocketFixture(t testing.TB) *fixture {
	f := newFixture(t)
	f.m.Supervisor = testSupervisor
	return f
}

func socketSpec(ports ...int) Spec {
	s := webSpec(ports...)
	s.Socket = true
	s.Bind = "127.0.0.1"
	s.StopGrace = 5 * time.Second
	return s
}

// startLoad starts a bounded load on port (httpload's defaults: 8 workers,
// half over kept-alive connections), counting which pids answered /whoami.
func startLoad(t testing.TB, port int) *httpload.Load {
	l := httpload.Start(httpload.Options{
		URL: fmt.Sprintf("http://127.0.0.1:%d/whoami", port),
		Who: func(body []byte) string { return strings.Fields(string(body) + " ?")[0] },
	})
	t.Cleanup(l.Stop)
	return l
}

// restartUnderLoad restarts s n times between two releases under load and
// returns the load's tally.
func restartUnderLoad(t testing.TB, f *fixture, s Spec, n int) *httpload.Load {
	t.Helper()
	ctx := testCtx(t)
	releases := []string{f.release, f.newRelease(t, "r2")}
	if err := f.m.Restart(ctx, s, releases[0]); err != nil {
		t.Fatal(err)
	}
	l := startLoad(t, s.Ports[0])
	waitSent(t, l, 100)
	for i := range n {
		if err := f.m.Restart(ctx, s, releases[(i+1)%2]); err != nil {
			l.Stop()
			t.Fatalf("restart %d: %v", i+1, err)
		}
	}
	waitSent(t, l, l.Sent()+100)
	l.Stop()
	return l
}

// waitSent waits until the load has sent n requests.
func waitSent(t testing.TB, l *httpload.Load, n int64) {
	t.Helper()
	if ok, _ := waitUntil(t.Context(), 30*time.Second, func() bool { return l.Sent() >= n }); !ok {
		t.Fatalf("load sent only %d requests", l.Sent())
	}
}

func TestSocketRestartsLoseNothing(t *testing.T) {
	f := newSocketFixture(t)
	port := freePort(t)
	s := socketSpec(port)
	l := restartUnderLoad(t, f, s, 20)
	t.Logf("socket: true, 20 restarts: %s", l)
	if l.Failed() != 0 {
		t.Errorf("socket: true lost requests: %s", l)
	}
	if l.Answerers() < 21 {
		t.Errorf("requests were answered by %d processes; want all 21 releases' processes to have served", l.Answerers())
	}
	st := f.m.Status(s)
	if len(st) != 1 || !st[0].Running || st[0].Supervisor == nil || !st[0].Supervisor.Running ||
		!slices.Equal(st[0].Listeners, []int{st[0].PID}) || st[0].Restart != RestartSocket {
		t.Errorf("Status after the restarts: %+v (supervisor %+v); want one process on the port, held by a running supervisor", st, st[0].Supervisor)
	}
	if pid, _, _ := whoami(t, port); pid != st[0].PID {
		t.Errorf("port answered by pid %d; Status says %d", pid, st[0].PID)
	}
}

// TestPlainRestartsLoseRequests is the same load on a service without
// socket: true: it shows the load test can see lost requests.
func TestPlainRestartsLoseRequests(t *testing.T) {
	f := newFixture(t)
	s := webSpec(freePort(t))
	s.StopGrace = 5 * time.Second
	l := restartUnderLoad(t, f, s, 20)
	t.Logf("plain restart, 20 restarts: %s", l)
	if l.Failed() == 0 {
		t.Errorf("a plain stop-then-start restart lost no request (%s): the load test cannot tell", l)
	}
}

func TestSocketRestartFailureKeepsOldServing(t *testing.T) {
	cases := []struct {
		name, file, want string
		wantErr          error
	}{
		{"exits at start", "BROKEN", "exiting", ErrExited},
		{"never healthy", "UNHEALTHY", "database unreachable", ErrUnhealthyStatus},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newSocketFixture(t)
			ctx := testCtx(t)
			f.m.Env = append(f.m.Env, "APP_EXIT_IF=BROKEN", "APP_UNHEALTHY_FILE=UNHEALTHY")
			port := freePort(t)
			s := socketSpec(port)
			// Both processes accept from the one held socket, so a probe
			// reaches the new one only by the kernel's choice: on a busy
			// machine 1s of probes all went to the old one (flaky). 5s
			// gives the never-healthy process its answer every time.
			s.Health.Timeout = 5 * time.Second
			if err := f.m.Restart(ctx, s, f.release); err != nil {
				t.Fatal(err)
			}
			old := mustRecord(t, f.m.PIDFile("web", port))
			bad := f.newRelease(t, "bad")
			if err := os.WriteFile(filepath.Join(bad, tc.file), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			l := startLoad(t, port)
			waitSent(t, l, 100)
			err := f.m.Restart(ctx, s, bad)
			waitSent(t, l, l.Sent()+100)
			l.Stop()
			var he *HealthError
			if !errors.As(err, &he) || !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.want) ||
				!strings.Contains(err.Error(), fmt.Sprintf("old process (pid %d", old.PID)) {
				t.Errorf("Restart to a bad release: %v; want a *HealthError (%v) saying %q and that pid %d keeps serving", err, tc.wantErr, tc.want, old.PID)
			}
			if l.Failed() != 0 {
				t.Errorf("requests lost while the bad release failed: %s", l)
			}
			if rec := mustRecord(t, f.m.PIDFile("web", port)); rec.PID != old.PID || !alive(rec) {
				t.Errorf("PID file names %d (alive %v); want the old %d still running", rec.PID, alive(rec), old.PID)
			}
			if _, err := os.Stat(f.m.nextPIDFile("web", port)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the failed process's PID file is left: %v", err)
			}
			if pid, dir, _ := whoami(t, port); pid != old.PID || dir != f.release {
				t.Errorf("port answered by %d from %s; want the old %d from %s", pid, dir, old.PID, f.release)
			}
			st := f.m.Status(s)[0]
			if !slices.Equal(st.Listeners, []int{old.PID}) || st.NewPID != 0 {
				t.Errorf("Status: listeners %v, new pid %d; want only the old %d", st.Listeners, st.NewPID, old.PID)
			}
		})
	}
}

func TestSupervisorKilledMidRestart(t *testing.T) {
	f := newSocketFixture(t)
	ctx := testCtx(t)
	f.m.Env = append(f.m.Env, "APP_BOOT_DELAY=300ms")
	port, port2 := freePort(t), freePort(t)
	s := socketSpec(port, port2)
	if err := f.m.Restart(ctx, s, f.release); err != nil {
		t.Fatal(err)
	}
	r2 := f.newRelease(t, "r2")
	done := make(chan error, 1)
	go func() { done <- f.m.Restart(ctx, s, r2) }()
	next := f.m.nextPIDFile("web", port)
	if ok, _ := waitUntil(ctx, 20*time.Second, func() bool { _, err := os.Stat(next); return err == nil }); !ok {
		t.Fatal("the restart never started a new process")
	}
	sup := mustRecord(t, supervisorPIDFile(f.m.pidsDir(), "web"))
	if err := syscall.Kill(sup.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-done
	t.Logf("restart with its supervisor killed: %v", err)

	// The restart went on to the second port with a new supervisor; the
	// first port's process was started by the dead one.
	st := f.m.Status(s)[0]
	if !st.Orphan || len(st.Listeners) != 1 || (st.Running && st.Listeners[0] != st.PID) {
		t.Errorf("Status after kill -9 of the supervisor: %+v (supervisor %+v); want exactly the recorded process serving, shown as orphaned", st, st.Supervisor)
	}

	// The next start recovers: the orphan is replaced under the running supervisor.
	if err := f.m.Start(ctx, s, r2, port); err != nil {
		t.Fatalf("start after the supervisor died: %v", err)
	}
	st = f.m.Status(s)[0]
	if !st.Supervisor.Running || st.Supervisor.PID == sup.PID || !st.Running || st.Orphan || st.ReleaseDir != r2 || !slices.Equal(st.Listeners, []int{st.PID}) {
		t.Errorf("Status after start: %+v (supervisor %+v); want a new supervisor and exactly one process from %s", st, st.Supervisor, r2)
	}
	if pid, dir, _ := whoami(t, port); pid != st.PID || dir != r2 {
		t.Errorf("port answered by %d from %s; want %d from %s", pid, dir, st.PID, r2)
	}
	if st2 := f.m.Status(s)[1]; !st2.Running || st2.ReleaseDir != r2 || !slices.Equal(st2.Listeners, []int{st2.PID}) {
		t.Errorf("second port after start: %+v; want exactly one process from %s", st2, r2)
	}
	if err := f.m.Start(ctx, s, r2, port); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("second start: %v; want ErrAlreadyRunning", err)
	}
}

func TestSocketStopClosesEverything(t *testing.T) {
	f := newSocketFixture(t)
	ctx := testCtx(t)
	p1, p2 := freePort(t), freePort(t)
	s := socketSpec(p1, p2)
	if err := f.m.StartAll(ctx, s, f.release); err != nil {
		t.Fatal(err)
	}
	for _, p := range s.Ports {
		if err := f.m.Check(ctx, s, p); err != nil {
			t.Fatal(err)
		}
	}
	st := f.m.Status(s)
	sup := st[0].Supervisor
	if !sup.Running || len(sup.Sockets) != 2 {
		t.Fatalf("supervisor %+v; want running, holding 2 sockets", sup)
	}
	if err := f.m.StopAll(ctx, s); err != nil {
		t.Fatal(err)
	}
	for _, p := range f.m.Status(s) {
		if p.Running || p.Supervisor.Running || p.Supervisor.State != "stopped" || len(p.Listeners) != 0 {
			t.Errorf("after stop: %+v (supervisor %+v); want nothing running or listening", p, p.Supervisor)
		}
	}
	if !gone(sup.PID) {
		t.Errorf("supervisor %d still runs", sup.PID)
	}
}

// TestSwitchToSocket: a service that ran without socket: true, whose
// process binds the port itself, moves to a held socket on its next restart.
func TestSwitchToSocket(t *testing.T) {
	f := newSocketFixture(t)
	ctx := testCtx(t)
	port := freePort(t)
	plain := webSpec(port)
	if err := f.m.Restart(ctx, plain, f.release); err != nil {
		t.Fatal(err)
	}
	old := mustRecord(t, f.m.PIDFile("web", port))
	s := socketSpec(port)
	if err := f.m.Restart(ctx, s, f.newRelease(t, "r2")); err != nil {
		t.Fatalf("first restart with socket: true: %v", err)
	}
	st := f.m.Status(s)[0]
	if !st.Running || st.PID == old.PID || !gone(old.PID) || !st.Supervisor.Running || !slices.Equal(st.Listeners, []int{st.PID}) {
		t.Errorf("after the switch: %+v (supervisor %+v); want a new process on the held socket and the old %d gone", st, st.Supervisor, old.PID)
	}
}

// TestSupervisorDeadRestartRecovers: with its supervisor killed, the
// service keeps serving, Status says so, and the next restart starts a new
// supervisor and replaces the orphaned process without losing a request.
func TestSupervisorDeadRestartRecovers(t *testing.T) {
	f := newSocketFixture(t)
	ctx := testCtx(t)
	port := freePort(t)
	s := socketSpec(port)
	if err := f.m.Restart(ctx, s, f.release); err != nil {
		t.Fatal(err)
	}
	sup := mustRecord(t, supervisorPIDFile(f.m.pidsDir(), "web"))
	old := mustRecord(t, f.m.PIDFile("web", port))
	if err := syscall.Kill(sup.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if ok, _ := waitUntil(ctx, 10*time.Second, func() bool { return gone(sup.PID) }); !ok {
		t.Fatal("supervisor survived SIGKILL")
	}
	st := f.m.Status(s)[0]
	if st.Supervisor.Running || st.Supervisor.State != "dead" || !st.Running || !st.Orphan || !slices.Equal(st.Listeners, []int{old.PID}) {
		t.Errorf("Status with a dead supervisor: %+v (supervisor %+v); want it dead and pid %d still serving alone", st, st.Supervisor, old.PID)
	}
	l := startLoad(t, port)
	waitSent(t, l, 100)
	if err := f.m.Restart(ctx, s, f.newRelease(t, "r2")); err != nil {
		t.Fatalf("restart with a dead supervisor: %v", err)
	}
	waitSent(t, l, l.Sent()+100)
	l.Stop()
	t.Logf("restart replacing an orphan: %s", l)
	st = f.m.Status(s)[0]
	if !st.Supervisor.Running || st.Orphan || st.PID == old.PID || !gone(old.PID) || !slices.Equal(st.Listeners, []int{st.PID}) {
		t.Errorf("Status after the restart: %+v (supervisor %+v); want a new supervisor and one process", st, st.Supervisor)
	}
}

// TestReusePortStartsBeforeStop: a service that binds its port with
// SO_REUSEPORT gets its new process started beside the old one: under load
// no connection is ever refused, through 5 restarts and a release that
// exits at start (which leaves the old process serving).
func TestReusePortStartsBeforeStop(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	f.m.Env = append(f.m.Env, "APP_REUSE_PORT=1", "APP_EXIT_IF=BROKEN")
	port := freePort(t)
	s := webSpec(port)
	s.ReusePort = true
	if err := f.m.Restart(ctx, s, f.release); err != nil {
		t.Fatal(err)
	}
	l := startLoad(t, port)
	waitSent(t, l, 100)
	releases := []string{f.release, f.newRelease(t, "r2")}
	for i := range 5 {
		if err := f.m.Restart(ctx, s, releases[(i+1)%2]); err != nil {
			l.Stop()
			t.Fatalf("restart %d: %v", i+1, err)
		}
	}
	old := mustRecord(t, f.m.PIDFile("web", port))
	bad := f.newRelease(t, "bad")
	if err := os.WriteFile(filepath.Join(bad, "BROKEN"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := f.m.Restart(ctx, s, bad)
	waitSent(t, l, l.Sent()+100)
	l.Stop()
	t.Logf("reuse_port, 5 restarts and a failed one: %s", l)
	if !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), fmt.Sprintf("old process (pid %d", old.PID)) {
		t.Errorf("restart to a release that exits: %v; want ErrExited, the old pid %d keeping on", err, old.PID)
	}
	for _, e := range l.Errors() {
		if strings.Contains(e, "connection refused") {
			t.Errorf("a connection was refused: %s", e)
		}
	}
	if l.Answerers() < 6 {
		t.Errorf("requests answered by %d processes; want the 6 releases' processes", l.Answerers())
	}
	if pid, _, _ := whoami(t, port); pid != old.PID {
		t.Errorf("port answered by %d; want the old %d", pid, old.PID)
	}
	if st := f.m.Status(s)[0]; st.Restart != RestartReusePort || st.PID != old.PID || st.NewPID != 0 {
		t.Errorf("Status: %+v; want the old pid %d and no new one", st, old.PID)
	}
}

// helperRestart runs in a child test binary: a drover restarting a socket
// service to a release whose process boots for a minute, to be killed.
func helperRestart() int {
	port, _ := strconv.Atoi(os.Getenv("HELPER_PORT"))
	m := &Manager{SharedDir: os.Getenv("HELPER_SHARED"), Env: []string{"APP_BOOT_DELAY=1m"}, Supervisor: testSupervisor}
	appBin = os.Getenv("HELPER_APP")
	s := socketSpec(port)
	s.Health.Timeout = 2 * time.Minute
	if err := m.Restart(context.Background(), s, os.Getenv("HELPER_RELEASE")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestDeployerKilledMidRestart: the drover restarting a socket service is
// killed with -9 while the new process boots. The supervisor stops the new
// process, the old one serves alone throughout, Status says so, and the
// next restart works.
func TestDeployerKilledMidRestart(t *testing.T) {
	f := newSocketFixture(t)
	ctx := testCtx(t)
	port := freePort(t)
	s := socketSpec(port)
	if err := f.m.Restart(ctx, s, f.release); err != nil {
		t.Fatal(err)
	}
	old := mustRecord(t, f.m.PIDFile("web", port))
	l := startLoad(t, port)
	waitSent(t, l, 100)

	r2 := f.newRelease(t, "r2")
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), "SERVICE_TEST_HELPER=restart", "HELPER_SHARED="+f.shared,
		"HELPER_RELEASE="+r2, "HELPER_PORT="+strconv.Itoa(port), "HELPER_APP="+appBin)
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = helper.Process.Kill(); _ = helper.Wait() })
	var cand *record
	if ok, _ := waitUntil(ctx, 20*time.Second, func() bool {
		cand, _ = readRecord(f.m.nextPIDFile("web", port))
		return cand != nil
	}); !ok {
		t.Fatal("the helper never started a new process")
	}
	if err := helper.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = helper.Wait()
	if ok, _ := waitUntil(ctx, 40*time.Second, func() bool { return gone(cand.PID) }); !ok {
		t.Fatalf("the new process %d of the killed restart still runs", cand.PID)
	}
	waitSent(t, l, l.Sent()+100)
	l.Stop()
	t.Logf("restart killed mid-way: %s", l)
	if l.Failed() != 0 {
		t.Errorf("requests lost: %s", l)
	}
	st := f.m.Status(s)[0]
	if !st.Running || st.PID != old.PID || st.NewPID != 0 || !slices.Equal(st.Listeners, []int{old.PID}) || st.Orphan {
		t.Errorf("Status after the killed restart: %+v; want the old pid %d alone", st, old.PID)
	}
	if err := f.m.Restart(ctx, s, r2); err != nil {
		t.Fatalf("the next restart: %v", err)
	}
	if pid, dir, _ := whoami(t, port); dir != r2 || gone(pid) || !gone(old.PID) {
		t.Errorf("after the next restart: pid %d from %s answers, old %d gone %v", pid, dir, old.PID, gone(old.PID))
	}
}

// TestMinHealthyTime: a new process that passes its health check and then
// crashes does not replace the old one when min_healthy_time covers it.
func TestMinHealthyTime(t *testing.T) {
	for _, socket := range []bool{true, false} {
		t.Run(fmt.Sprintf("socket=%v", socket), func(t *testing.T) {
			f := newSocketFixture(t)
			ctx := testCtx(t)
			f.m.Env = append(f.m.Env, "APP_CRASH_IF=CRASHY")
			port := freePort(t)
			s := webSpec(port)
			if socket {
				s = socketSpec(port)
			}
			s.Health.MinHealthyTime = time.Second
			if err := f.m.Restart(ctx, s, f.release); err != nil {
				t.Fatal(err)
			}
			crashy := f.newRelease(t, "crashy")
			if err := os.WriteFile(filepath.Join(crashy, "CRASHY"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			old := mustRecord(t, f.m.PIDFile("web", port))
			err := f.m.Restart(ctx, s, crashy)
			if !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "after it became healthy") {
				t.Fatalf("restart to a release that crashes after its health check: %v; want ErrExited after it became healthy", err)
			}
			if socket {
				if pid, dir, _ := whoami(t, port); pid != old.PID || dir != f.release {
					t.Errorf("port answered by %d from %s; want the old %d", pid, dir, old.PID)
				}
			}
		})
	}
}

// BenchmarkRestartUnderLoad: 20 restarts of a service under a load of 8
// workers (keep-alive and new connections), with socket: true and with a
// plain stop-then-start restart. Metrics: failed requests in percent of
// those sent, p99 latency during the restarts and over 2,000 requests
// before them.
func BenchmarkRestartUnderLoad(b *testing.B) {
	for _, socket := range []bool{true, false} {
		name := "plain"
		if socket {
			name = "socket"
		}
		b.Run(name, func(b *testing.B) {
			var failed, sent float64
			var p99, steady time.Duration
			for range b.N {
				f := newFixture(b)
				f.m.Logger = nil
				f.m.Supervisor = testSupervisor
				s := webSpec(freePort(b))
				s.StopGrace = 5 * time.Second
				s.Socket = socket
				if err := f.m.Restart(testCtx(b), s, f.release); err != nil {
					b.Fatal(err)
				}
				base := startLoad(b, s.Ports[0])
				waitSent(b, base, 2000) // a steady run to compare with
				base.Stop()
				steady = max(steady, base.P99())
				l := restartUnderLoad(b, f, s, 20)
				failed += float64(l.Failed())
				sent += float64(l.Sent())
				p99 = max(p99, l.P99())
				if err := f.m.StopAll(testCtx(b), s); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(100*failed/sent, "failed-%")
			b.ReportMetric(sent/float64(b.N), "requests/op")
			b.ReportMetric(float64(p99.Microseconds())/1000, "p99-restarts-ms")
			b.ReportMetric(float64(steady.Microseconds())/1000, "p99-steady-ms")
		})
	}
}

// TestSupervisorControlSocket: only this user may talk to the supervisor
// (it starts processes as this user), whatever the umask; a deploy_to too
// long for a unix socket path is refused with what to do.
func TestSupervisorControlSocket(t *testing.T) {
	f := newSocketFixture(t)
	ctx := testCtx(t)
	old := syscall.Umask(0)
	err := f.m.StartAll(ctx, socketSpec(freePort(t)), f.release)
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(supervisorSocket(f.m.pidsDir(), "web"))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("control socket mode %v under umask 0; want 0600", perm)
	}

	deep := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if err := os.MkdirAll(filepath.Join(deep, "releases", "r1"), 0o755); err != nil {
		t.Fatal(err)
	}
	m := &Manager{SharedDir: filepath.Join(deep, "shared"), Supervisor: testSupervisor}
	err = m.StartAll(ctx, socketSpec(freePort(t)), filepath.Join(deep, "releases", "r1"))
	if err == nil || !strings.Contains(err.Error(), "use a shorter deploy_to") {
		t.Errorf("start under a %d-byte deploy_to: %v; want an error saying to shorten it", len(deep), err)
	}
}
