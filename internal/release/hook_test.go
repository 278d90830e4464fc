package release_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
)

// killPIDFile kills the process whose PID a hook wrote to path, when the
// test ends.
func killPIDFile(t *testing.T, path string) {
	t.Cleanup(func() {
		if pid := readPID(path); pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

func readPID(path string) int {
	data, _ := os.ReadFile(path)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}

// gone reports whether pid no longer runs: no such process, or a zombie
// waiting for an init that may never reap it.
func gone(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) > 0 && (fields[0] == "Z" || fields[0] == "X")
}

// TestHookStartingBackgroundProcessFinishes runs a hook that starts a
// background process holding its output: the step ends when the hook's
// shell does, not when the background process does.
func TestHookStartingBackgroundProcessFinishes(t *testing.T) {
	a := apptest.New(t, apptest.Options{NoService: true, Extra: "  worker: {when: prepare, commands: ['sleep 300 & echo $! > $DROVER_SHARED_DIR/bg.pid', echo started]}\n"})
	killPIDFile(t, filepath.Join(a.DeployTo, "shared", "bg.pid"))
	e := engine(a)
	c := a.Repo.Head()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began := time.Now()
	if _, err := e.Prepare(ctx, release.PrepareOptions{ID: id(1, c), Commit: c}); err != nil {
		t.Fatalf("prepare with a background process in a hook: %v (after %s)", err, time.Since(began).Round(time.Millisecond))
	}
	if took := time.Since(began); took > 20*time.Second {
		t.Fatalf("prepare took %s: it waited for the hook's background process", took)
	}
}

// TestHookTimeoutKillsItsProcessGroup runs a hook that outlives its
// timeout: the step fails naming the hook and the timeout, and every
// process the hook started is gone.
func TestHookTimeoutKillsItsProcessGroup(t *testing.T) {
	a := apptest.New(t, apptest.Options{NoService: true, Extra: "  slow: {when: prepare, timeout: 1s, commands: ['sleep 300 & echo $! > $DROVER_SHARED_DIR/bg.pid; sleep 300']}\n"})
	pidFile := filepath.Join(a.DeployTo, "shared", "bg.pid")
	killPIDFile(t, pidFile)
	e := engine(a)
	c := a.Repo.Head()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := e.Prepare(ctx, release.PrepareOptions{ID: id(1, c), Commit: c})
	if err == nil {
		t.Fatal("a hook that outlived its timeout succeeded")
	}
	if ctx.Err() != nil {
		t.Fatalf("the hook's timeout did not stop it; the test's deadline did: %v", err)
	}
	var se *release.StepError
	if !errors.As(err, &se) || se.Step != "hook:slow" {
		t.Fatalf("error %v is not a failure of step hook:slow", err)
	}
	if !strings.Contains(err.Error(), "slow") || !strings.Contains(err.Error(), "1s") || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("error %q does not name the hook and its timeout", err)
	}
	pid := readPID(pidFile)
	if pid <= 1 {
		t.Fatalf("the hook did not record its background process (%q)", pidFile)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("background process %d of the timed-out hook still runs", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
