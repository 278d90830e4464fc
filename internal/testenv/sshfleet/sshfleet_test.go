package sshfleet_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/testenv/sshfleet"
)

// sshRun runs cmd on host i with the OpenSSH client, so the harness is
// checked independently of drover's own SSH code.
func sshRun(t *testing.T, f *sshfleet.Fleet, i int, cmd string) string {
	t.Helper()
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("ssh client not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ssh", append(f.SSHArgs(i), cmd)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh %s %q: %v\n%s", f.Hosts[i].Name, cmd, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestNamespacedHostsHavePrivateSrv(t *testing.T) {
	f := sshfleet.Start(t, 2, sshfleet.Options{RequireNamespaces: true})
	if f.Hosts[0].Addr == f.Hosts[1].Addr {
		t.Fatalf("hosts share address %s", f.Hosts[0].Addr)
	}
	for i, h := range f.Hosts {
		if err := os.WriteFile(filepath.Join(h.Path("/srv"), "who"), []byte(h.Name), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := sshRun(t, f, i, "cat /srv/who"); got != h.Name {
			t.Errorf("%s: /srv/who = %q, want %q", h.Name, got, h.Name)
		}
		// Each host sees only its own address.
		if got := sshRun(t, f, i, "ip -4 -o addr show dev eth0"); !strings.Contains(got, " "+h.Addr+"/") {
			t.Errorf("%s: eth0 = %q, want %s", h.Name, got, h.Addr)
		}
		sshRun(t, f, i, "mkdir -p ~/.drover/bin && echo "+h.Name+" > ~/.drover/bin/mark")
		if b, err := os.ReadFile(filepath.Join(h.Path(filepath.Join(os.Getenv("HOME"), ".drover")), "bin", "mark")); err != nil || strings.TrimSpace(string(b)) != h.Name {
			t.Errorf("%s: ~/.drover is not private to the host: %q %v", h.Name, b, err)
		}
	}
	// The real /srv is untouched.
	if _, err := os.Stat("/srv/who"); err == nil {
		t.Error("/srv/who leaked to the real filesystem")
	}
	// Hosts reach each other over the fleet's bridge.
	if got := sshRun(t, f, 0, "cat < /dev/null > /dev/tcp/"+f.Hosts[1].Addr+"/22 && echo reach || echo no"); got != "reach" {
		t.Errorf("host0 cannot reach host1: %q", got)
	}
}

func TestLoopback(t *testing.T) {
	f := sshfleet.Start(t, 2, sshfleet.Options{Loopback: true})
	if f.Namespaces || f.Hosts[0].Port == f.Hosts[1].Port {
		t.Fatalf("want two loopback hosts with distinct ports, got %+v", f.Hosts)
	}
	for i := range f.Hosts {
		if got := sshRun(t, f, i, "echo hello"); got != "hello" {
			t.Errorf("host%d: got %q", i, got)
		}
	}
}

func TestCleanupRemovesNamespaces(t *testing.T) {
	var ns []string
	t.Run("fleet", func(t *testing.T) {
		f := sshfleet.Start(t, 2, sshfleet.Options{RequireNamespaces: true})
		ns = ourNamespaces(t)
		if len(ns) != len(f.Hosts) {
			t.Fatalf("namespaces %v, want at least %d", ns, len(f.Hosts))
		}
	})
	if left := ourNamespaces(t); len(left) > 0 {
		t.Errorf("namespaces %v still exist after cleanup", left)
	}
}

// ourNamespaces lists this test process's fleet namespaces.
func ourNamespaces(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	prefix := fmt.Sprintf("drover-fleet-%d-", os.Getpid())
	for _, l := range strings.Split(string(out), "\n") {
		if fs := strings.Fields(l); len(fs) > 0 && strings.HasPrefix(fs[0], prefix) {
			ns = append(ns, fs[0])
		}
	}
	return ns
}

func TestStartRemovesWhatCrashedRunsLeft(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	// A finished child's PID stands in for a crashed test process.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	pid := dead.Process.Pid
	ns := fmt.Sprintf("drover-fleet-%d-250-0", pid)
	bridge := "drvbr250"
	for _, args := range [][]string{
		{"netns", "add", ns},
		{"link", "add", bridge, "type", "bridge"},
		{"link", "set", bridge, "alias", fmt.Sprintf("drover-fleet-%d", pid)},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Skipf("cannot create namespaces here: ip %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", ns).Run()
		_ = exec.Command("ip", "link", "del", bridge).Run()
	})
	sshfleet.Start(t, 1, sshfleet.Options{RequireNamespaces: true})
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), ns) {
		t.Errorf("stale namespace %s survived", ns)
	}
	if err := exec.Command("ip", "link", "show", bridge).Run(); err == nil {
		t.Errorf("stale bridge %s survived", bridge)
	}
}
