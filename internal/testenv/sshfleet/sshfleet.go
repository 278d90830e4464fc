// Package sshfleet starts a fleet of real OpenSSH servers for tests: one
// sshd per host, each in its own network namespace on a private bridge and
// in its own mount namespace, so every host has its own 10.213.S.x address
// and its own private /srv and ~/.drover while sharing the rest of the real
// filesystem (binaries, git repositories in temp dirs) with the test.
//
// When namespaces are unavailable (not root, no iproute2) the fleet falls
// back to sshd processes on 127.0.0.1 with distinct ports that share one
// filesystem; Fleet.Namespaces tells which kind a test got.
//
// DROVER_SSHFLEET_LOOPBACK=1 forces the loopback kind (tests that require
// namespaces then skip), to check that tests pass on machines without them.
//
// sshd comes from Debian's openssh-server package, installed on first use
// when /usr/sbin/sshd is missing and the test runs as root.
package sshfleet

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHD is the OpenSSH server binary the fleet runs.
const SSHD = "/usr/sbin/sshd"

// Options change how Start builds a fleet.
type Options struct {
	// Loopback runs every sshd on 127.0.0.1 with its own port and no
	// namespaces. Start also falls back to it when namespaces are unavailable.
	Loopback bool
	// RequireNamespaces skips the test instead of falling back to loopback,
	// for tests that need each host's /srv to be private.
	RequireNamespaces bool
	// Port is the port sshd listens on inside each namespace; default 22.
	// Loopback hosts always get a free port of their own.
	Port int
	// PrivateDirs are the absolute paths each namespaced host sees as its
	// own directory (backed by Root+path); default /srv and ~/.drover of
	// the fleet's user.
	PrivateDirs []string
}

// Host is one running sshd.
type Host struct {
	Name    string          // host0, host1, ...; also its alias in Fleet.SSHConfig
	Addr    string          // IP address to dial
	Port    int             // port sshd listens on
	Root    string          // this host's private deploy root on the real filesystem
	HostKey gossh.PublicKey // the host key sshd offers
	Log     string          // sshd's log file

	private []string
	ns      string
}

// Address returns "Addr:Port".
func (h Host) Address() string { return net.JoinHostPort(h.Addr, strconv.Itoa(h.Port)) }

// Path returns where a path on the host lives on the real filesystem:
// under Root for the host's private directories, else the path itself
// (loopback hosts share the real filesystem entirely).
func (h Host) Path(remote string) string {
	for _, p := range h.private {
		if remote == p || strings.HasPrefix(remote, p+"/") {
			return filepath.Join(h.Root, remote)
		}
	}
	return remote
}

// Fleet is a set of running sshd hosts that accept one client key.
type Fleet struct {
	Hosts      []Host
	User       string // the user to log in as (root when namespaced)
	KeyFile    string // unencrypted ed25519 private key authorized on every host
	KnownHosts string // known_hosts holding every host's key as [addr]:port
	SSHConfig  string // ssh config with one "Host hostN" alias per host
	Namespaces bool   // each host has its own network and mount namespace
	Dir        string // temp dir holding keys, configs and logs
}

// Start runs n sshd hosts and stops them when the test ends. It installs
// openssh-server first if needed, skipping the test if that is impossible.
func Start(t testing.TB, n int, opts Options) *Fleet {
	t.Helper()
	if n < 1 || n > 250 {
		t.Fatalf("sshfleet: %d hosts; want 1 to 250", n)
	}
	ensureSSHD(t)
	u, err := user.Current()
	if err != nil {
		t.Fatalf("sshfleet: current user: %v", err)
	}
	f := &Fleet{User: u.Username, Dir: t.TempDir()}
	if f.KeyFile, _, err = writeKey(filepath.Join(f.Dir, "id_ed25519")); err != nil {
		t.Fatalf("sshfleet: client key: %v", err)
	}
	if opts.Port == 0 {
		opts.Port = 22
	}
	if opts.PrivateDirs == nil {
		opts.PrivateDirs = []string{"/srv", filepath.Join(u.HomeDir, ".drover")}
	}

	if os.Getenv("DROVER_SSHFLEET_LOOPBACK") == "1" && !opts.RequireNamespaces {
		opts.Loopback = true
	}
	var sn *subnet
	if !opts.Loopback {
		sn, err = allocSubnet(t)
		if err != nil {
			if opts.RequireNamespaces {
				t.Skipf("sshfleet: network namespaces unavailable: %v", err)
			}
			t.Logf("sshfleet: network namespaces unavailable, using 127.0.0.1: %v", err)
		}
	} else if opts.RequireNamespaces {
		t.Fatal("sshfleet: Loopback and RequireNamespaces both set")
	}
	f.Namespaces = sn != nil

	for i := range n {
		h := Host{Name: fmt.Sprintf("host%d", i), Root: filepath.Join(f.Dir, fmt.Sprintf("host%d", i))}
		if err := os.MkdirAll(h.Root, 0o755); err != nil {
			t.Fatal(err)
		}
		// sshd's own files stay out of Root, which holds only what the
		// host sees as its private directories.
		sshdDir := filepath.Join(f.Dir, h.Name+".sshd")
		if err := os.MkdirAll(sshdDir, 0o700); err != nil {
			t.Fatal(err)
		}
		keyFile, pub, err := writeKey(filepath.Join(sshdDir, "ssh_host_ed25519_key"))
		if err != nil {
			t.Fatalf("sshfleet: host key: %v", err)
		}
		h.HostKey, h.Log = pub, filepath.Join(sshdDir, "sshd.log")
		sc := sshdConfig{
			dir: sshdDir, hostKey: keyFile, authorizedKeys: f.KeyFile + ".pub",
		}
		if f.Namespaces {
			h.private = opts.PrivateDirs
			h.Addr, h.Port = sn.hostAddr(i), opts.Port
			if err := sn.addHost(t, &h); err != nil {
				t.Fatalf("sshfleet: %s: %v", h.Name, err)
			}
			sc.addr = h.Address()
			if err := startNamespaced(t, &h, sc); err != nil {
				t.Fatalf("sshfleet: %s: %v", h.Name, err)
			}
		} else {
			h.Addr = "127.0.0.1"
			if err := startLoopback(t, &h, sc); err != nil {
				t.Fatalf("sshfleet: %s: %v", h.Name, err)
			}
		}
		f.Hosts = append(f.Hosts, h)
	}
	if err := f.writeClientFiles(); err != nil {
		t.Fatalf("sshfleet: %v", err)
	}
	return f
}

// writeClientFiles writes known_hosts and the ssh config for the fleet.
func (f *Fleet) writeClientFiles() error {
	f.KnownHosts = filepath.Join(f.Dir, "known_hosts")
	f.SSHConfig = filepath.Join(f.Dir, "ssh_config")
	var kh, cfg strings.Builder
	for _, h := range f.Hosts {
		kh.WriteString(knownhosts.Line([]string{knownhosts.Normalize(h.Address())}, h.HostKey) + "\n")
		fmt.Fprintf(&cfg, "Host %s\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n\n",
			h.Name, h.Addr, h.Port, f.User, f.KeyFile, f.KnownHosts)
	}
	if err := os.WriteFile(f.KnownHosts, []byte(kh.String()), 0o600); err != nil {
		return err
	}
	return os.WriteFile(f.SSHConfig, []byte(cfg.String()), 0o600)
}

// SSHArgs returns arguments for the OpenSSH client that reach host i with
// the fleet's key and known_hosts, for tests that shell out to ssh.
func (f *Fleet) SSHArgs(i int) []string {
	return []string{"-F", f.SSHConfig, "-o", "BatchMode=yes", f.Hosts[i].Name}
}

// writeKey writes a new unencrypted ed25519 private key to path (0600)
// and its public key to path.pub.
func writeKey(path string) (string, gossh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", nil, err
	}
	block, err := gossh.MarshalPrivateKey(priv, "drover sshfleet")
	if err != nil {
		return "", nil, err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", nil, err
	}
	sshPub, err := gossh.NewPublicKey(pub)
	if err != nil {
		return "", nil, err
	}
	if err := os.WriteFile(path+".pub", gossh.MarshalAuthorizedKey(sshPub), 0o644); err != nil {
		return "", nil, err
	}
	return path, sshPub, nil
}

// sshdConfig is what differs between hosts' sshd_config files.
type sshdConfig struct {
	dir            string // where the config and pid file go
	addr           string // ListenAddress host:port
	hostKey        string
	authorizedKeys string
}

func (c sshdConfig) write() (string, error) {
	path := filepath.Join(c.dir, "sshd_config")
	text := fmt.Sprintf(`# written by drover's sshfleet test harness
ListenAddress %s
HostKey %s
AuthorizedKeysFile %s
PidFile %s
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
MaxSessions 100
MaxStartups 100
LogLevel VERBOSE
Subsystem sftp internal-sftp
`, c.addr, c.hostKey, c.authorizedKeys, filepath.Join(c.dir, "sshd.pid"))
	return path, os.WriteFile(path, []byte(text), 0o644)
}

// startLoopback runs sshd on a free 127.0.0.1 port, retrying when another
// process takes the port between choosing and binding it.
func startLoopback(t testing.TB, h *Host, sc sshdConfig) error {
	var err error
	for range 5 {
		h.Port, err = freePort()
		if err != nil {
			return err
		}
		sc.addr = h.Address()
		cfg, werr := sc.write()
		if werr != nil {
			return werr
		}
		cmd := exec.Command(SSHD, "-D", "-e", "-f", cfg)
		if err = run(t, h, cmd); err == nil {
			return nil
		}
		if !strings.Contains(err.Error(), "Address already in use") {
			return err
		}
	}
	return err
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// run starts sshd, stops it when the test ends, and waits until it
// answers with an SSH banner.
func run(t testing.TB, h *Host, cmd *exec.Cmd) error {
	logf, err := os.OpenFile(h.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start sshd: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Logf("sshfleet: %s: sshd (pid %d) did not exit after SIGKILL", h.Name, cmd.Process.Pid)
		}
	}
	log := h.Log
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			if b, err := os.ReadFile(log); err == nil {
				t.Logf("sshfleet: %s sshd log (%s):\n%s", h.Name, log, tail(b, 4000))
			}
		}
	})
	if err := waitReady(h.Address(), exited, 20*time.Second); err != nil {
		stop()
		b, _ := os.ReadFile(log)
		return fmt.Errorf("sshd on %s: %w\n%s", h.Address(), err, tail(b, 2000))
	}
	return nil
}

// waitReady polls a TCP connect to addr until sshd sends its banner, the
// process exits, or the deadline passes.
func waitReady(addr string, exited <-chan struct{}, within time.Duration) error {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = banner(addr); last == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("sshd exited before it was ready")
		case <-deadline.C:
			return fmt.Errorf("not ready after %s: %w", within, last)
		case <-tick.C:
		}
	}
}

func banner(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 4)
	if _, err := c.Read(buf); err != nil {
		return fmt.Errorf("read banner: %w", err)
	}
	if string(buf) != "SSH-" {
		return fmt.Errorf("unexpected banner %q", buf)
	}
	return nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
