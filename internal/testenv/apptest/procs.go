package apptest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Process is a process that runs under a test's directories.
type Process struct {
	PID int
	Cmd string // its command line, arguments joined by spaces
	Cwd string // its working directory, " (deleted)" when it is gone
}

func (p Process) String() string { return fmt.Sprintf("pid %d %q in %s", p.PID, p.Cmd, p.Cwd) }

// Leftovers lists the processes (other than this one) whose working
// directory or executable lies under one of dirs, read from /proc. A
// directory deleted meanwhile still matches.
func Leftovers(dirs ...string) []Process {
	entries, _ := os.ReadDir("/proc")
	var out []Process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		base := filepath.Join("/proc", e.Name())
		cwd, _ := os.Readlink(filepath.Join(base, "cwd"))
		exe, _ := os.Readlink(filepath.Join(base, "exe"))
		if !under(cwd, dirs) && !under(exe, dirs) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(base, "cmdline"))
		out = append(out, Process{PID: pid, Cmd: strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " ")), Cwd: cwd})
	}
	return out
}

func under(path string, dirs []string) bool {
	if path == "" {
		return false
	}
	path = strings.TrimSuffix(path, " (deleted)")
	for _, d := range dirs {
		if d != "" && (path == d || strings.HasPrefix(path, strings.TrimSuffix(d, "/")+"/")) {
			return true
		}
	}
	return false
}

// KillLeftovers fails t for each process still running under dirs and
// kills it (SIGKILL), then waits, bounded, until they are gone. Processes
// already being stopped get a few seconds to go first.
func KillLeftovers(t testing.TB, dirs ...string) {
	t.Helper()
	left := Leftovers(dirs...)
	for deadline := time.Now().Add(3 * time.Second); len(left) > 0 && time.Now().Before(deadline); left = Leftovers(dirs...) {
		time.Sleep(20 * time.Millisecond)
	}
	if len(left) == 0 {
		return
	}
	for _, p := range left {
		t.Errorf("the test left a process running: %s; it is killed now (stop it in t.Cleanup)", p)
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(5 * time.Second); len(Leftovers(dirs...)) > 0; {
		if time.Now().After(deadline) {
			t.Errorf("processes survive SIGKILL: %v", Leftovers(dirs...))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
