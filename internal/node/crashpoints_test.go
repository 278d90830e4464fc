package node_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/transport/local"
)

var (
	debugOnce sync.Once
	debugPath string
	debugErr  error
)

// debugBinary builds drover with -tags droverdebug, the only build whose
// node protocol honours crash points.
func debugBinary(t *testing.T) string {
	t.Helper()
	debugOnce.Do(func() {
		dir, err := os.MkdirTemp("", "drover-debug-")
		if err != nil {
			debugErr = err
			return
		}
		debugPath = filepath.Join(dir, "drover")
		cmd := exec.Command("go", "build", "-tags", "droverdebug", "-o", debugPath, "./cmd/drover")
		cmd.Dir = apptest.ModuleRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			debugErr = err
			debugPath = string(out)
		}
	})
	if debugErr != nil {
		t.Fatalf("build drover -tags droverdebug: %v\n%s", debugErr, debugPath)
	}
	return debugPath
}

// TestProductionBinaryRefusesCrashAt sends crash points to a normal build:
// a request carrying crash_at is refused, DROVER_CRASH_AT is ignored, and
// the engine never kills itself.
func TestProductionBinaryRefusesCrashAt(t *testing.T) {
	if testing.Short() {
		t.Skip("builds drover")
	}
	a := apptest.New(t, apptest.Options{NoService: true})
	bin := apptest.DroverBinary(t)
	c := a.Repo.Head()
	id := release.NewID(time.Unix(1000, 0), c)
	req := func() *node.Request {
		return &node.Request{Op: node.OpPrepare, App: a.Config, Env: "test", Host: "local", Roles: []string{"web", "db"}, ID: id, Commit: c}
	}

	crash := req()
	crash.CrashAt = "before:fetch"
	resp, err := call(t, &local.Conn{Binary: bin}, crash)
	if err != nil {
		t.Fatalf("a normal build died on crash_at: %v", err)
	}
	if resp.OK || !strings.Contains(resp.Error, "crash_at") {
		t.Fatalf("a normal build accepted crash_at: %+v", resp)
	}
	if _, err := os.Stat(filepath.Join(a.DeployTo, "releases", id)); err == nil {
		t.Errorf("the refused request prepared %s anyway", id)
	}

	// The environment variable does nothing either: prepare runs to the end.
	mustOK(t, &local.Conn{Binary: bin, Env: []string{"DROVER_CRASH_AT=after:checkout"}}, req())
}

// leftovers returns the processes whose working directory is under root
// (the app processes a test's deploys started).
func leftovers(root string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err != nil {
			continue
		}
		cwd = strings.TrimSuffix(cwd, " (deleted)")
		if cwd == root || strings.HasPrefix(cwd, root+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// noLeftovers makes the test fail if, once its own cleanups ran, a process
// still works under the deploy root *root (and kills it, so the suite
// leaves nothing running either way). Register it before apptest.New.
func noLeftovers(t *testing.T, root *string) {
	t.Cleanup(func() {
		if *root == "" {
			return
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			pids := leftovers(*root)
			if len(pids) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("processes left running under %s: %v", *root, pids)
				for _, pid := range pids {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}
