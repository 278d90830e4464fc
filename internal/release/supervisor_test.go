package release_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/testenv/apptest"
)

// TestServiceStartAfterSupervisorDied: the supervisor of a socket service
// with two ports dies (kill -9); its app processes keep serving, orphaned.
// `drover service start` must bring every port back under a live
// supervisor, also when some port was started again already, not stop at
// that port with "already running".
func TestServiceStartAfterSupervisorDied(t *testing.T) {
	ctx := context.Background()
	a := apptest.New(t, apptest.Options{Socket: true, Ports: 2})
	e := engine(a)
	c := a.Repo.Head()
	r := id(1, c)
	prepare(t, e, r, c)
	if err := e.Activate(ctx, r); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(a.DeployTo, "shared", "pids", "web.supervisor.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if pid <= 1 {
		t.Fatalf("supervisor pid file %q", b)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // polling a condition, bounded
	}
	// One port first (a new supervisor takes it over), then every port:
	// the one already running again must not fail the start.
	if _, err := e.ServiceAction(ctx, "start", "web", a.Ports[1]); err != nil {
		t.Fatalf("service start web --port %d after the supervisor died: %v", a.Ports[1], err)
	}
	procs, err := e.ServiceAction(ctx, "start", "", 0)
	if err != nil {
		t.Fatalf("service start after the supervisor died: %v", err)
	}
	if len(procs) != 2 {
		t.Fatalf("status after start: %+v; want two ports", procs)
	}
	for _, p := range procs {
		if !p.Running || p.Orphan || p.Supervisor == nil || !p.Supervisor.Running {
			t.Errorf("port %d after start: running %v orphan %v supervisor %+v; want running under a live supervisor", p.Port, p.Running, p.Orphan, p.Supervisor)
		}
	}
	for _, port := range a.Ports {
		if body := get(t, port); !strings.Contains(body, r) {
			t.Errorf("port %d answers %q, want %s", port, body, r)
		}
	}
}
