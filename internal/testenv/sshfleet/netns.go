package sshfleet

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Every fleet gets a bridge drvbrS holding 10.213.S.1/24 in the root
// namespace; host i is the namespace drover-fleet-PID-S-i with
// 10.213.S.(i+2) on a veth whose root end drvShi is a bridge port. Hosts
// reach each other over the bridge (a bastion can ProxyJump to a peer)
// without IP forwarding. S is chosen under netLock so concurrent test
// binaries never share one; the bridge's alias names the owning PID so a
// later run can remove what a crashed one left behind.
const (
	nsPrefix     = "drover-fleet-"
	bridgePrefix = "drvbr"
	netLock      = "/tmp/drover-sshfleet-net.lock"
)

type subnet struct {
	s      int
	bridge string
}

func (sn *subnet) hostAddr(i int) string { return fmt.Sprintf("10.213.%d.%d", sn.s, i+2) }

// allocSubnet cleans up after crashed runs, then claims a free 10.213.S.0/24
// with a bridge. It fails when namespaces cannot be used here.
func allocSubnet(t testing.TB) (*subnet, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("not root (uid %d)", os.Geteuid())
	}
	for _, tool := range []string{"ip", "unshare", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found", tool)
		}
	}
	unlock, err := lockFile(netLock)
	if err != nil {
		return nil, err
	}
	defer unlock()
	cleanStale(t)

	used := map[int]bool{}
	out, err := ipOut("-o", "-4", "addr", "show")
	if err != nil {
		return nil, err
	}
	for _, f := range strings.Fields(out) {
		var a, b, c int
		if n, _ := fmt.Sscanf(f, "10.213.%d.%d/%d", &a, &b, &c); n == 3 {
			used[a] = true
		}
	}
	links, err := ipOut("-o", "link", "show")
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(links, "\n") {
		name := linkName(l)
		var s, i int
		if n, _ := fmt.Sscanf(name, "drv%dh%d", &s, &i); n == 2 {
			used[s] = true // a veth that outlived its fleet
		}
		if strings.HasPrefix(name, bridgePrefix) {
			if s, err := strconv.Atoi(strings.TrimPrefix(name, bridgePrefix)); err == nil {
				used[s] = true
			}
		}
	}
	for s := range 256 {
		if used[s] {
			continue
		}
		sn := &subnet{s: s, bridge: fmt.Sprintf("%s%d", bridgePrefix, s)}
		if err := ip("link", "add", sn.bridge, "type", "bridge"); err != nil {
			return nil, err
		}
		t.Cleanup(func() { _ = ip("link", "del", sn.bridge) })
		for _, args := range [][]string{
			{"link", "set", sn.bridge, "alias", fmt.Sprintf("%s%d", nsPrefix, os.Getpid())},
			{"addr", "add", fmt.Sprintf("10.213.%d.1/24", s), "dev", sn.bridge},
			{"link", "set", sn.bridge, "up"},
		} {
			if err := ip(args...); err != nil {
				return nil, err
			}
		}
		return sn, nil
	}
	return nil, fmt.Errorf("every 10.213.S.0/24 is in use")
}

// addHost makes h's network namespace and plugs it into the bridge.
func (sn *subnet) addHost(t testing.TB, h *Host) error {
	i, _ := strconv.Atoi(strings.TrimPrefix(h.Name, "host"))
	h.ns = fmt.Sprintf("%s%d-%d-%d", nsPrefix, os.Getpid(), sn.s, i)
	veth := fmt.Sprintf("drv%dh%d", sn.s, i)
	if err := ip("netns", "add", h.ns); err != nil {
		return err
	}
	ns := h.ns
	t.Cleanup(func() {
		removeNetns(ns)
		// Deleting the root end removes the pair at once, even if the
		// namespace lingers; the next fleet may reuse the name.
		_ = ip("link", "del", veth)
	})
	for _, args := range [][]string{
		{"link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"link", "set", veth, "master", sn.bridge, "up"},
		{"-n", ns, "addr", "add", h.Addr + "/24", "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	} {
		if err := ip(args...); err != nil {
			return err
		}
	}
	return nil
}

// startNamespaced runs sshd in h's network namespace and in a private
// mount namespace where each of h.private is bind-mounted from h.Root.
func startNamespaced(t testing.TB, h *Host, sc sshdConfig) error {
	cfg, err := sc.write()
	if err != nil {
		return err
	}
	script := "set -e\n"
	for _, p := range h.private {
		// The mount point must exist on the real filesystem; an empty
		// directory there is all this leaves behind.
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("mount point: %w", err)
		}
		backing := filepath.Join(h.Root, p)
		if err := os.MkdirAll(backing, 0o755); err != nil {
			return err
		}
		script += fmt.Sprintf("mount --bind %s %s\n", shellQuote(backing), shellQuote(p))
	}
	script += fmt.Sprintf("exec %s -D -e -f %s\n", SSHD, shellQuote(cfg))
	// sshd refuses to start without its privilege separation directory,
	// which Debian creates at boot, not at install.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	cmd := exec.Command("ip", "netns", "exec", h.ns, "unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	return run(t, h, cmd)
}

// cleanStale removes namespaces and bridges whose owning process is gone.
// Callers hold netLock.
func cleanStale(t testing.TB) {
	out, _ := ipOut("netns", "list")
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || !strings.HasPrefix(fields[0], nsPrefix) {
			continue
		}
		if pid := ownerPID(fields[0]); pid > 0 && !alive(pid) {
			t.Logf("sshfleet: removing namespace %s left by a crashed run (pid %d)", fields[0], pid)
			removeNetns(fields[0])
		}
	}
	links, _ := ipOut("-o", "link", "show")
	for _, l := range strings.Split(links, "\n") {
		name := linkName(l)
		if !strings.HasPrefix(name, bridgePrefix) {
			continue
		}
		i := strings.Index(l, "alias "+nsPrefix)
		if i < 0 {
			continue
		}
		if pid := ownerPID(strings.Fields(l[i+len("alias "):])[0]); pid > 0 && !alive(pid) {
			t.Logf("sshfleet: removing bridge %s left by a crashed run (pid %d)", name, pid)
			_ = ip("link", "del", name)
		}
	}
}

// removeNetns kills every process in the namespace, waits for them to
// die, then deletes it (which deletes its end of the veth and so the pair).
func removeNetns(ns string) {
	out, _ := ipOut("netns", "pids", ns)
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			pids = append(pids, pid)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for alive(pid) && !zombie(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	_ = ip("netns", "del", ns)
}

// zombie reports whether pid has exited and waits for its parent to reap it.
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// ownerPID reads PID from "drover-fleet-PID[-...]".
func ownerPID(name string) int {
	rest := strings.TrimPrefix(name, nsPrefix)
	if i := strings.IndexByte(rest, '-'); i >= 0 {
		rest = rest[:i]
	}
	pid, _ := strconv.Atoi(rest)
	return pid
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}

// linkName returns the interface name of one line of `ip -o link show`
// ("3: name@peer: <...> ...").
func linkName(line string) string {
	f := strings.Fields(line)
	if len(f) < 2 {
		return ""
	}
	name := strings.TrimSuffix(f[1], ":")
	if i := strings.IndexByte(name, '@'); i >= 0 {
		name = name[:i]
	}
	return name
}

func ip(args ...string) error {
	_, err := ipOut(args...)
	return err
}

func ipOut(args ...string) (string, error) {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
