package apptest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// startUnder starts command with sh -c in dir as its own session, the way
// drover starts a service, and returns its PID.
func startUnder(t *testing.T, dir, command string) int {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait() // reap the shell; its children go to init
	return cmd.Process.Pid
}

// gone waits until no process runs under dir, and reports whether that
// happened within a few seconds.
func gone(dir string) bool {
	deadline := time.Now().Add(5 * time.Second)
	for len(Leftovers(dir)) > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// TestStopPIDsKillsTheGroup: a PID file names the shell a service was
// started with; StopPIDs must stop what that shell started too.
func TestStopPIDsKillsTheGroup(t *testing.T) {
	dir := t.TempDir()
	pids := filepath.Join(dir, "pids")
	if err := os.Mkdir(pids, 0o755); err != nil {
		t.Fatal(err)
	}
	pid := startUnder(t, dir, "sleep 600; echo done")
	t.Cleanup(func() { KillLeftovers(t, dir) })
	if err := os.WriteFile(filepath.Join(pids, "web-1.pid"), []byte(strconv.Itoa(pid)+"\n{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(Leftovers(dir)) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(Leftovers(dir)); n < 2 {
		t.Fatalf("%d processes under %s, want the shell and its sleep", n, dir)
	}
	StopPIDs(pids)
	if !gone(dir) {
		t.Errorf("StopPIDs left %v running", Leftovers(dir))
	}
}

// TestKillLeftovers: a process whose working directory lies under a test's
// directory is found, reported and killed, even after the directory is
// deleted.
func TestKillLeftovers(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "release")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	startUnder(t, sub, "exec sleep 600")
	deadline := time.Now().Add(5 * time.Second)
	for l := Leftovers(dir); (len(l) == 0 || l[0].Cmd != "sleep 600") && time.Now().Before(deadline); l = Leftovers(dir) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.RemoveAll(sub); err != nil {
		t.Fatal(err)
	}
	left := Leftovers(dir)
	if len(left) != 1 || left[0].Cmd != "sleep 600" {
		t.Fatalf("leftovers %v, want the sleep", left)
	}
	rec := &recorder{TB: t}
	KillLeftovers(rec, dir)
	if len(rec.errs) != 1 {
		t.Errorf("KillLeftovers reported %q, want one error naming the process", rec.errs)
	}
	if !gone(dir) {
		t.Errorf("still running: %v", Leftovers(dir))
	}
}

// recorder keeps the errors a check reports instead of failing the test.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, format)
}
