package ssh_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
	"golang.org/x/sync/errgroup"

	"github.com/drover/drover/internal/testenv/sshfleet"
	"github.com/drover/drover/internal/transport/ssh"
)

// sshdPort is a non-default port, so tests prove Port is honoured and
// known_hosts entries take the [addr]:port form.
const sshdPort = 2222

// hermetic keeps the tests from the developer's own ssh-agent, keys and
// ssh config.
func hermetic(t *testing.T) {
	t.Helper()
	t.Setenv("SSH_AUTH_SOCK", "")
	t.Setenv("HOME", t.TempDir())
}

func start(t *testing.T, n int) *sshfleet.Fleet {
	t.Helper()
	hermetic(t)
	return sshfleet.Start(t, n, sshfleet.Options{Port: sshdPort})
}

// config reaches host i of f directly, with the fleet's key and known_hosts.
func config(f *sshfleet.Fleet, i int) ssh.Config {
	h := f.Hosts[i]
	return ssh.Config{
		Name: h.Name, Host: h.Addr, Port: h.Port, User: f.User, IdentityFile: f.KeyFile,
		KnownHosts: f.KnownHosts, SSHConfig: os.DevNull, DialTimeout: 10 * time.Second,
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, c ssh.Config) *ssh.Client {
	t.Helper()
	cl, err := ssh.Dial(ctxFor(t, 30*time.Second), c)
	if err != nil {
		t.Fatalf("dial %s: %v", c.Host, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func output(t *testing.T, cl *ssh.Client, cmd string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if err := cl.Run(ctxFor(t, 30*time.Second), cmd, nil, &out, &errOut); err != nil {
		t.Fatalf("run %q: %v\nstderr: %s", cmd, err, errOut.String())
	}
	return strings.TrimSpace(out.String())
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRunOutputAndExitCode(t *testing.T) {
	f := start(t, 1)
	cl := dial(t, config(f, 0))
	if got := output(t, cl, "echo hello; whoami"); got != "hello\n"+f.User {
		t.Errorf("stdout = %q", got)
	}
	var out, errOut bytes.Buffer
	err := cl.Run(ctxFor(t, 10*time.Second), "echo out; echo oops >&2; exit 3", nil, &out, &errOut)
	var xe *ssh.ExitError
	if !errors.As(err, &xe) || xe.Code != 3 {
		t.Fatalf("err = %v, want *ExitError with code 3", err)
	}
	if !strings.Contains(err.Error(), "host0") || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("error %q should name the host and the status", err)
	}
	if out.String() != "out\n" || errOut.String() != "oops\n" {
		t.Errorf("stdout %q stderr %q", out.String(), errOut.String())
	}
	// nil writers discard.
	if err := cl.Run(ctxFor(t, 10*time.Second), "echo ignored", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestSessionsShareOneConnection(t *testing.T) {
	f := start(t, 1)
	cl := dial(t, config(f, 0))
	const n = 25 // more than OpenSSH's default MaxSessions of 10 in flight
	conns := make([]string, n)
	var g errgroup.Group
	for i := range n {
		g.Go(func() error {
			var out bytes.Buffer
			// SSH_CONNECTION holds the client's source port: one
			// connection means one port for every session.
			err := cl.Run(ctxFor(t, 30*time.Second), "sleep 0.2; echo $SSH_CONNECTION", nil, &out, nil)
			conns[i] = strings.TrimSpace(out.String())
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for i, c := range conns {
		if c == "" || c != conns[0] {
			t.Fatalf("session %d ran on connection %q, session 0 on %q", i, c, conns[0])
		}
	}
}

func TestRunStreamsStdin(t *testing.T) {
	f := start(t, 1)
	cl := dial(t, config(f, 0))

	t.Run("bulk", func(t *testing.T) {
		data := make([]byte, 8<<20)
		_, _ = rand.Read(data)
		sum := sha256.Sum256(data)
		var out bytes.Buffer
		if err := cl.Run(ctxFor(t, 60*time.Second), "sha256sum | cut -d' ' -f1", bytes.NewReader(data), &out, nil); err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(out.String()); got != hex.EncodeToString(sum[:]) {
			t.Errorf("remote sha256 %s, want %s", got, hex.EncodeToString(sum[:]))
		}
	})

	t.Run("interactive", func(t *testing.T) {
		// A line reaches the command and its answer comes back while
		// stdin is still open: streamed, not buffered until EOF.
		inR, inW := io.Pipe()
		outR, outW := io.Pipe()
		done := make(chan error, 1)
		go func() {
			done <- cl.Run(ctxFor(t, 30*time.Second), `while read l; do echo "got $l"; done`, inR, outW, nil)
			outW.Close()
		}()
		lines := make(chan string, 2)
		go func() {
			buf := make([]byte, 64)
			for {
				n, err := outR.Read(buf)
				if n > 0 {
					lines <- string(buf[:n])
				}
				if err != nil {
					close(lines)
					return
				}
			}
		}()
		for _, word := range []string{"one", "two"} {
			if _, err := io.WriteString(inW, word+"\n"); err != nil {
				t.Fatal(err)
			}
			select {
			case l := <-lines:
				if l != "got "+word+"\n" {
					t.Fatalf("got %q", l)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("no answer to %q while stdin is open", word)
			}
		}
		inW.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("command did not end after stdin EOF")
		}
	})
}

func TestRunCancelStopsRemoteCommand(t *testing.T) {
	f := start(t, 1)
	cl := dial(t, config(f, 0))
	marker := fmt.Sprintf("sleep %d.%d", 900+time.Now().Nanosecond()%99, os.Getpid()%1000)
	running := func() bool {
		var out bytes.Buffer
		err := cl.Run(ctxFor(t, 10*time.Second), "pgrep -f '^"+marker+"$' || true", nil, &out, nil)
		return err == nil && strings.TrimSpace(out.String()) != ""
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cl.Run(ctx, marker, nil, nil, nil) }()
	eventually(t, 10*time.Second, marker+" never started", running)

	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	eventually(t, 10*time.Second, marker+" still running on the host after cancel", func() bool { return !running() })
	// The connection survives for the next step.
	if got := output(t, cl, "echo still here"); got != "still here" {
		t.Errorf("after cancel: %q", got)
	}
}

func writeFile(t *testing.T, size int) string {
	t.Helper()
	data := make([]byte, size)
	_, _ = rand.Read(data)
	p := filepath.Join(t.TempDir(), "drover")
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// removeIfShared deletes a binary EnsureBinary put on the real filesystem
// (loopback hosts share it); namespaced hosts keep it under Host.Root.
func removeIfShared(t *testing.T, f *sshfleet.Fleet, remote string) {
	if !f.Namespaces {
		t.Cleanup(func() { os.Remove(remote) })
	}
}

func inode(t *testing.T, path string) (uint64, time.Time) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino, fi.ModTime()
}

func TestEnsureBinary(t *testing.T) {
	f := start(t, 1)
	h := f.Hosts[0]
	cl := dial(t, config(f, 0))
	local := writeFile(t, 3<<20)
	data, _ := os.ReadFile(local)
	sum := sha256.Sum256(data)
	ctx := ctxFor(t, 60*time.Second)

	remote, err := cl.EnsureBinary(ctx, local)
	if err != nil {
		t.Fatal(err)
	}
	removeIfShared(t, f, remote)
	want := fmt.Sprintf("/.drover/bin/drover-%s", hex.EncodeToString(sum[:])[:16])
	if !strings.HasSuffix(remote, want) || !filepath.IsAbs(remote) {
		t.Fatalf("remote path %q, want absolute ~%s", remote, want)
	}
	onDisk := h.Path(remote)
	if got, _ := os.ReadFile(onDisk); !bytes.Equal(got, data) {
		t.Fatalf("%s differs from the local file", onDisk)
	}
	if fi, _ := os.Stat(onDisk); fi.Mode().Perm() != 0o755 {
		t.Errorf("mode %v, want 0755", fi.Mode().Perm())
	}
	ino, mtime := inode(t, onDisk)

	t.Run("second call skips the upload", func(t *testing.T) {
		again, err := cl.EnsureBinary(ctx, local)
		if err != nil || again != remote {
			t.Fatalf("EnsureBinary = %q, %v; want %q", again, err, remote)
		}
		if ino2, mtime2 := inode(t, onDisk); ino2 != ino || !mtime2.Equal(mtime) {
			t.Errorf("file was rewritten: inode %d→%d mtime %v→%v", ino, ino2, mtime, mtime2)
		}
	})

	t.Run("checksum mismatch re-uploads", func(t *testing.T) {
		if err := os.WriteFile(onDisk, []byte("corrupted"), 0o755); err != nil {
			t.Fatal(err)
		}
		again, err := cl.EnsureBinary(ctx, local)
		if err != nil || again != remote {
			t.Fatalf("EnsureBinary = %q, %v", again, err)
		}
		if got, _ := os.ReadFile(onDisk); !bytes.Equal(got, data) {
			t.Fatal("corrupted copy was not replaced")
		}
		if ino2, _ := inode(t, onDisk); ino2 == ino {
			t.Error("replacement should be a new file renamed into place")
		}
		if got := output(t, cl, "sha256sum < "+remote+" | cut -d' ' -f1"); got != hex.EncodeToString(sum[:]) {
			t.Errorf("remote checksum %s", got)
		}
	})

	t.Run("racing uploads to one home directory", func(t *testing.T) {
		other := writeFile(t, 1<<20)
		var g errgroup.Group
		paths := make([]string, 4)
		for i := range paths {
			g.Go(func() error {
				c, err := ssh.Dial(ctx, config(f, 0))
				if err != nil {
					return err
				}
				defer c.Close()
				paths[i], err = c.EnsureBinary(ctx, other)
				return err
			})
		}
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
		removeIfShared(t, f, paths[0])
		want, _ := os.ReadFile(other)
		if got, _ := os.ReadFile(h.Path(paths[0])); !bytes.Equal(got, want) {
			t.Fatal("racing uploads left a wrong file")
		}
		leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(h.Path(paths[0])), ".drover-*"))
		if len(leftovers) > 0 {
			t.Errorf("temp files left behind: %v", leftovers)
		}
	})
}

func TestEnsureBinaryIsPerHost(t *testing.T) {
	hermetic(t)
	f := sshfleet.Start(t, 2, sshfleet.Options{RequireNamespaces: true})
	local := writeFile(t, 1<<20)
	for i, h := range f.Hosts {
		cl := dial(t, config(f, i))
		remote, err := cl.EnsureBinary(ctxFor(t, 30*time.Second), local)
		if err != nil {
			t.Fatal(err)
		}
		// Each host has its own ~/.drover, so each gets its own copy
		// and none lands on the real filesystem.
		if _, err := os.Stat(h.Path(remote)); err != nil {
			t.Errorf("%s: %v", h.Name, err)
		}
		if _, err := os.Stat(remote); err == nil {
			t.Errorf("%s: %s leaked to the real filesystem", h.Name, remote)
		}
	}
}

func TestUnknownHostKeyRefused(t *testing.T) {
	f := start(t, 1)
	h := f.Hosts[0]
	c := config(f, 0)
	c.KnownHosts = filepath.Join(t.TempDir(), "known_hosts") // does not exist
	_, err := ssh.Dial(ctxFor(t, 30*time.Second), c)
	t.Log(err)
	var he *ssh.HostKeyError
	if !errors.As(err, &he) || he.Problem != ssh.HostKeyUnknown {
		t.Fatalf("err = %v, want *HostKeyError unknown", err)
	}
	fp := gossh.FingerprintSHA256(h.HostKey)
	if he.Fingerprint != fp || he.KeyType != "ssh-ed25519" {
		t.Errorf("HostKeyError %+v, want ssh-ed25519 %s", he, fp)
	}
	msg := err.Error()
	for _, want := range []string{h.Addr, fp, "ssh-ed25519", fmt.Sprintf("ssh-keyscan -p %d %s >> %s", h.Port, h.Addr, c.KnownHosts), "--insecure-accept-new"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error should contain %q:\n%s", want, msg)
		}
	}
	if _, err := os.Stat(c.KnownHosts); err == nil {
		t.Error("known_hosts was written without AcceptNew")
	}
}

func TestAcceptNewAddsHostKey(t *testing.T) {
	f := start(t, 1)
	h := f.Hosts[0]
	c := config(f, 0)
	c.KnownHosts = filepath.Join(t.TempDir(), "dir", "known_hosts")
	c.AcceptNew = true
	cl := dial(t, c)
	output(t, cl, "true")
	cl.Close()

	data, err := os.ReadFile(c.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	want := knownhosts.Line([]string{knownhosts.Normalize(h.Address())}, h.HostKey) + "\n"
	if string(data) != want {
		t.Errorf("known_hosts = %q, want %q", data, want)
	}
	// The recorded key is trusted from now on, without AcceptNew.
	c.AcceptNew = false
	dial(t, c)
	if again, _ := os.ReadFile(c.KnownHosts); string(again) != want {
		t.Errorf("known_hosts changed on the second dial: %q", again)
	}
}

func TestChangedHostKeyRefused(t *testing.T) {
	f := start(t, 1)
	h := f.Hosts[0]
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	other, _ := gossh.NewSignerFromKey(otherPriv)
	c := config(f, 0)
	c.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
	line := "# a comment\n" + knownhosts.Line([]string{knownhosts.Normalize(h.Address())}, other.PublicKey()) + "\n"
	if err := os.WriteFile(c.KnownHosts, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	c.AcceptNew = true // must not matter
	_, err := ssh.Dial(ctxFor(t, 30*time.Second), c)
	t.Log(err)
	var he *ssh.HostKeyError
	if !errors.As(err, &he) || he.Problem != ssh.HostKeyChanged {
		t.Fatalf("err = %v, want *HostKeyError changed", err)
	}
	msg := err.Error()
	for _, want := range []string{c.KnownHosts + ":2", "man-in-the-middle", gossh.FingerprintSHA256(h.HostKey), "ssh-keygen -R"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error should contain %q:\n%s", want, msg)
		}
	}
	if data, _ := os.ReadFile(c.KnownHosts); string(data) != line {
		t.Errorf("known_hosts was modified: %q", data)
	}
}

func TestSSHConfigAlias(t *testing.T) {
	f := start(t, 1)
	h := f.Hosts[0]
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config")
	// The key sits where only the config names it; Port and User also
	// come only from the config.
	key := filepath.Join(dir, "deploy_key")
	data, _ := os.ReadFile(f.KeyFile)
	if err := os.WriteFile(key, data, 0o600); err != nil {
		t.Fatal(err)
	}
	text := fmt.Sprintf("Host other\n  Port 1\n\nHost web-*\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n", h.Addr, h.Port, f.User, key)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cl := dial(t, ssh.Config{Host: "web-1", SSHConfig: cfg, KnownHosts: f.KnownHosts})
	if got := output(t, cl, "whoami"); got != f.User {
		t.Errorf("whoami = %q", got)
	}

	t.Run("UserKnownHostsFile from the config", func(t *testing.T) {
		cl := dial(t, ssh.Config{Host: h.Name, SSHConfig: f.SSHConfig})
		output(t, cl, "true")
	})

	t.Run("explicit fields override the config", func(t *testing.T) {
		_, err := ssh.Dial(ctxFor(t, 30*time.Second), ssh.Config{Host: "web-1", User: "nobody-here", SSHConfig: cfg, KnownHosts: f.KnownHosts})
		var ae *ssh.AuthError
		if !errors.As(err, &ae) || ae.User != "nobody-here" {
			t.Fatalf("err = %v, want auth error for user nobody-here", err)
		}
	})
}

func TestProxyJump(t *testing.T) {
	f := start(t, 2)
	bastion, target := f.Hosts[0], f.Hosts[1]
	cfg := filepath.Join(t.TempDir(), "config")
	text := fmt.Sprintf("Host bastion\n  HostName %s\n  Port %d\n\nHost app\n  HostName %s\n  Port %d\n  ProxyJump %s@bastion\n\nHost *\n  User %s\n  IdentityFile %s\n",
		bastion.Addr, bastion.Port, target.Addr, target.Port, f.User, f.User, f.KeyFile)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cl := dial(t, ssh.Config{Host: "app", SSHConfig: cfg, KnownHosts: f.KnownHosts})
	got := output(t, cl, "echo $SSH_CONNECTION")
	// SSH_CONNECTION is "client_ip client_port server_ip server_port".
	fields := strings.Fields(got)
	if len(fields) != 4 || fields[2] != target.Addr || fields[3] != strconv.Itoa(target.Port) {
		t.Fatalf("SSH_CONNECTION = %q, want the target %s", got, target.Address())
	}
	if f.Namespaces && fields[0] != bastion.Addr {
		t.Errorf("target saw client %s, want the bastion %s", fields[0], bastion.Addr)
	}
}

// startAgent runs a real ssh-agent holding key, or, when OpenSSH's client
// tools are missing, x/crypto's agent keyring on a unix socket.
func startAgent(t *testing.T, key string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	if _, err := exec.LookPath("ssh-agent"); err == nil {
		cmd := exec.Command("ssh-agent", "-D", "-a", sock)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		eventually(t, 10*time.Second, "ssh-agent socket never appeared", func() bool {
			c, err := net.Dial("unix", sock)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		add := exec.Command("ssh-add", key)
		add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
		if out, err := add.CombinedOutput(); err != nil {
			t.Fatalf("ssh-add: %v\n%s", err, out)
		}
		return sock
	}
	data, _ := os.ReadFile(key)
	priv, err := gossh.ParseRawPrivateKey(data)
	if err != nil {
		t.Fatal(err)
	}
	ring := agent.NewKeyring()
	if err := ring.Add(agent.AddedKey{PrivateKey: priv}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); _ = agent.ServeAgent(ring, c) }()
		}
	}()
	return sock
}

func TestAgentAuth(t *testing.T) {
	f := start(t, 1)
	sock := startAgent(t, f.KeyFile)
	t.Setenv("SSH_AUTH_SOCK", sock)
	c := config(f, 0)
	c.IdentityFile = "" // only the agent holds the key
	cl := dial(t, c)
	if got := output(t, cl, "whoami"); got != f.User {
		t.Errorf("whoami = %q", got)
	}
}

func TestWrongKeyIsAuthError(t *testing.T) {
	f := start(t, 1)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, _ := gossh.MarshalPrivateKey(priv, "")
	wrong := filepath.Join(t.TempDir(), "wrong_key")
	if err := os.WriteFile(wrong, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	c := config(f, 0)
	c.IdentityFile = wrong
	_, err := ssh.Dial(ctxFor(t, 30*time.Second), c)
	t.Log(err)
	var ae *ssh.AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("err = %v, want *AuthError", err)
	}
	msg := err.Error()
	for _, want := range []string{f.User + "@" + f.Hosts[0].Address(), wrong, "authorized_keys"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error should contain %q:\n%s", want, msg)
		}
	}

	c.IdentityFile = filepath.Join(t.TempDir(), "missing")
	if _, err := ssh.Dial(ctxFor(t, 30*time.Second), c); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing identity file: err = %v", err)
	}
}

func TestUnreachable(t *testing.T) {
	hermetic(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr)
	l.Close()
	c := ssh.Config{Name: "web9", Host: "127.0.0.1", Port: addr.Port, KnownHosts: os.DevNull, SSHConfig: os.DevNull}
	_, err = ssh.Dial(ctxFor(t, 30*time.Second), c)
	t.Log(err)
	if err == nil || !strings.Contains(err.Error(), "web9") || !strings.Contains(err.Error(), "cannot reach "+addr.String()) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("err = %v, want it to name web9, %s and the refusal", err, addr)
	}

	t.Run("silent server times out", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var conns []net.Conn
		var mu sync.Mutex
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
		t.Cleanup(func() {
			l.Close()
			mu.Lock()
			defer mu.Unlock()
			for _, c := range conns {
				c.Close()
			}
		})
		c.Port = l.Addr().(*net.TCPAddr).Port
		c.DialTimeout = 300 * time.Millisecond
		start := time.Now()
		_, err = ssh.Dial(ctxFor(t, 30*time.Second), c)
		if err == nil || !strings.Contains(err.Error(), "timed out") {
			t.Fatalf("err = %v, want a handshake timeout", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Dial took %s with a 300ms timeout", d)
		}
	})
}

func TestParallelHosts(t *testing.T) {
	hermetic(t)
	f := sshfleet.Start(t, 4, sshfleet.Options{Port: sshdPort})
	if !f.Namespaces {
		t.Log("namespaces unavailable; hosts run on 127.0.0.1")
	}
	ctx := ctxFor(t, 60*time.Second)
	got := make([]string, len(f.Hosts))
	var g errgroup.Group
	for i := range f.Hosts {
		g.Go(func() error {
			cl, err := ssh.Dial(ctx, config(f, i))
			if err != nil {
				return err
			}
			defer cl.Close()
			var out bytes.Buffer
			err = cl.Run(ctx, "echo $SSH_CONNECTION", nil, &out, nil)
			got[i] = strings.TrimSpace(out.String())
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for i, h := range f.Hosts {
		fields := strings.Fields(got[i])
		if len(fields) != 4 || fields[2] != h.Addr || fields[3] != strconv.Itoa(h.Port) {
			t.Errorf("%s answered as %q, want server %s", h.Name, got[i], h.Address())
		}
	}
}

// TestEnsureBinaryTrustsNothingOnTheHost: a copy already on the host is
// reused only when its content hashes to the local binary's, the binary
// path and its directories are no symlinks, and the directory is the
// user's alone. Namespaced hosts, so the symlinks stay in their private
// ~/.drover.
func TestEnsureBinaryTrustsNothingOnTheHost(t *testing.T) {
	hermetic(t)
	f := sshfleet.Start(t, 1, sshfleet.Options{RequireNamespaces: true})
	h := f.Hosts[0]
	cl := dial(t, config(f, 0))
	ctx := ctxFor(t, 60*time.Second)
	local := writeFile(t, 1<<20)
	data, _ := os.ReadFile(local)

	remote, err := cl.EnsureBinary(ctx, local)
	if err != nil {
		t.Fatal(err)
	}
	onDisk := h.Path(remote)
	dir := filepath.Dir(onDisk)
	mode := func() os.FileMode {
		fi, err := os.Lstat(dir)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode()
	}
	if m := mode(); !m.IsDir() || m.Perm() != 0o700 {
		t.Errorf("%s mode %v, want a 0700 directory", dir, m)
	}

	t.Run("same-size tampered copy is replaced", func(t *testing.T) {
		evil := bytes.Repeat([]byte{'#'}, len(data))
		if err := os.WriteFile(onDisk, evil, 0o755); err != nil {
			t.Fatal(err)
		}
		again, err := cl.EnsureBinary(ctx, local)
		if err != nil || again != remote {
			t.Fatalf("EnsureBinary = %q, %v", again, err)
		}
		if got, _ := os.ReadFile(onDisk); !bytes.Equal(got, data) {
			t.Fatal("a tampered copy of the same size was reused")
		}
	})

	t.Run("an open directory of the user's is made private", func(t *testing.T) {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.EnsureBinary(ctx, local); err != nil {
			t.Fatal(err)
		}
		if m := mode(); m.Perm() != 0o700 {
			t.Errorf("%s mode %v, want 0700", dir, m.Perm())
		}
	})

	t.Run("a directory writable by others is refused", func(t *testing.T) {
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o700) })
		_, err := cl.EnsureBinary(ctx, local)
		if err == nil || !strings.Contains(err.Error(), "writable by others") || !strings.Contains(err.Error(), ".drover/bin") {
			t.Fatalf("EnsureBinary = %v; want a refusal naming the directory", err)
		}
	})

	t.Run("a symlinked binary is refused", func(t *testing.T) {
		elsewhere := filepath.Join(filepath.Dir(dir), "elsewhere")
		if err := os.WriteFile(elsewhere, data, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(onDisk); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(filepath.Dir(remote), "..", "elsewhere"), onDisk); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(onDisk); os.Remove(elsewhere) })
		_, err := cl.EnsureBinary(ctx, local)
		if err == nil || !strings.Contains(err.Error(), "symlink") || !strings.Contains(err.Error(), remote) {
			t.Fatalf("EnsureBinary = %v; want a refusal naming the symlink", err)
		}
	})

	t.Run("a symlinked directory is refused", func(t *testing.T) {
		other := filepath.Join(filepath.Dir(dir), "otherbin")
		if err := os.Rename(dir, other); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("otherbin", dir); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(other, filepath.Base(onDisk))); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(other, filepath.Base(onDisk)), data, 0o755); err != nil {
			t.Fatal(err)
		}
		_, err := cl.EnsureBinary(ctx, local)
		if err == nil || !strings.Contains(err.Error(), "symlink") || !strings.Contains(err.Error(), ".drover/bin") {
			t.Fatalf("EnsureBinary = %v; want a refusal naming the symlinked directory", err)
		}
		t.Log(err)
	})
}

// trustSetup writes an ssh config for host0 of f as alias "web" with the
// given extra options, and returns a Config that reaches it through that
// alias with nothing else set, so every trust decision comes from the
// config and the known_hosts files it names.
func trustSetup(t *testing.T, f *sshfleet.Fleet, options string) (ssh.Config, string) {
	t.Helper()
	h := f.Hosts[0]
	cfg := filepath.Join(t.TempDir(), "config")
	text := fmt.Sprintf("Host web\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n%s", h.Addr, h.Port, f.User, f.KeyFile, options)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return ssh.Config{Host: "web", SSHConfig: cfg, DialTimeout: 10 * time.Second}, cfg
}

func writeKnownHosts(t *testing.T, path string, lines ...string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
}

func otherKey(t *testing.T) gossh.PublicKey {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, _ := gossh.NewSignerFromKey(priv)
	return s.PublicKey()
}

// TestKnownHostsAsOpenSSH: drover trusts exactly the keys ssh(1) would,
// from every UserKnownHostsFile and GlobalKnownHostsFile, and honours or
// refuses by name the options that change trust or reachability.
func TestKnownHostsAsOpenSSH(t *testing.T) {
	f := start(t, 1)
	h := f.Hosts[0]
	ctx := ctxFor(t, 120*time.Second)
	good := knownhosts.Line([]string{knownhosts.Normalize(h.Address())}, h.HostKey) + "\n"
	bad := knownhosts.Line([]string{knownhosts.Normalize(h.Address())}, otherKey(t)) + "\n"
	home, _ := os.UserHomeDir() // hermetic: a temp dir
	dialOK := func(t *testing.T, c ssh.Config) {
		t.Helper()
		cl, err := ssh.Dial(ctx, c)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		cl.Close()
	}
	refused := func(t *testing.T, c ssh.Config, wants ...string) error {
		t.Helper()
		_, err := ssh.Dial(ctx, c)
		if err == nil {
			t.Fatal("dial succeeded")
		}
		t.Log(err)
		for _, w := range wants {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error should contain %q:\n%v", w, err)
			}
		}
		return err
	}

	t.Run("every UserKnownHostsFile is read", func(t *testing.T) {
		dir := t.TempDir()
		first, second := filepath.Join(dir, "a"), filepath.Join(dir, "b")
		writeKnownHosts(t, first)
		writeKnownHosts(t, second, good)
		c, _ := trustSetup(t, f, fmt.Sprintf("  UserKnownHostsFile %s %s\n", first, second))
		dialOK(t, c)
	})

	t.Run("default ~/.ssh/known_hosts2 is read", func(t *testing.T) {
		p := filepath.Join(home, ".ssh", "known_hosts2")
		writeKnownHosts(t, p, good)
		t.Cleanup(func() { os.Remove(p) })
		c, _ := trustSetup(t, f, "")
		dialOK(t, c)
	})

	t.Run("a key in the GlobalKnownHostsFile is trusted", func(t *testing.T) {
		global := filepath.Join(t.TempDir(), "ssh_known_hosts")
		writeKnownHosts(t, global, good)
		c, _ := trustSetup(t, f, fmt.Sprintf("  UserKnownHostsFile %s\n  GlobalKnownHostsFile %s\n", filepath.Join(t.TempDir(), "none"), global))
		dialOK(t, c)
	})

	t.Run("a host pinned in the global file is never accepted anew", func(t *testing.T) {
		global := filepath.Join(t.TempDir(), "ssh_known_hosts")
		writeKnownHosts(t, global, bad)
		user := filepath.Join(t.TempDir(), "known_hosts")
		c, _ := trustSetup(t, f, fmt.Sprintf("  UserKnownHostsFile %s\n  GlobalKnownHostsFile %s\n", user, global))
		c.AcceptNew = true
		err := refused(t, c, global+":1", "HAS CHANGED")
		var he *ssh.HostKeyError
		if !errors.As(err, &he) || he.Problem != ssh.HostKeyChanged {
			t.Errorf("err = %v, want *HostKeyError changed", err)
		}
		if _, err := os.Stat(user); err == nil {
			t.Error("the key was appended to the user's known_hosts")
		}
	})

	t.Run("HostKeyAlias names the host in known_hosts", func(t *testing.T) {
		kh := filepath.Join(t.TempDir(), "known_hosts")
		writeKnownHosts(t, kh, knownhosts.Line([]string{"web-alias"}, h.HostKey)+"\n")
		c, _ := trustSetup(t, f, fmt.Sprintf("  HostKeyAlias web-alias\n  UserKnownHostsFile %s\n", kh))
		dialOK(t, c)
		// A key pinned under the address is not the alias's.
		writeKnownHosts(t, kh, good)
		refused(t, c, "web-alias")
		// Accepted anew, it is recorded under the alias.
		writeKnownHosts(t, kh)
		c.AcceptNew = true
		dialOK(t, c)
		if data, _ := os.ReadFile(kh); !strings.HasPrefix(string(data), "web-alias ") {
			t.Errorf("known_hosts = %q, want a line for web-alias", data)
		}
	})

	t.Run("StrictHostKeyChecking yes forbids accepting", func(t *testing.T) {
		kh := filepath.Join(t.TempDir(), "known_hosts")
		c, cfg := trustSetup(t, f, fmt.Sprintf("  StrictHostKeyChecking yes\n  UserKnownHostsFile %s\n", kh))
		c.AcceptNew = true
		refused(t, c, "StrictHostKeyChecking yes", cfg, "web")
		if _, err := os.Stat(kh); err == nil {
			t.Error("known_hosts written despite StrictHostKeyChecking yes")
		}
	})

	t.Run("StrictHostKeyChecking accept-new is honoured", func(t *testing.T) {
		kh := filepath.Join(t.TempDir(), "known_hosts")
		c, _ := trustSetup(t, f, fmt.Sprintf("  StrictHostKeyChecking accept-new\n  UserKnownHostsFile %s\n", kh))
		dialOK(t, c)
		if data, _ := os.ReadFile(kh); string(data) != good {
			t.Errorf("known_hosts = %q, want %q", data, good)
		}
	})

	t.Run("StrictHostKeyChecking no is not honoured, and says so", func(t *testing.T) {
		kh := filepath.Join(t.TempDir(), "known_hosts")
		c, cfg := trustSetup(t, f, fmt.Sprintf("  StrictHostKeyChecking no\n  UserKnownHostsFile %s\n", kh))
		refused(t, c, "StrictHostKeyChecking no", cfg, "--insecure-accept-new")
		writeKnownHosts(t, kh, bad)
		c.AcceptNew = true
		refused(t, c, "HAS CHANGED", "StrictHostKeyChecking no")
	})

	t.Run("UserKnownHostsFile /dev/null cannot pin a new key", func(t *testing.T) {
		c, cfg := trustSetup(t, f, "  UserKnownHostsFile /dev/null\n")
		c.AcceptNew = true
		refused(t, c, "UserKnownHostsFile", "/dev/null", cfg)
	})

	t.Run("ProxyCommand is the connection", func(t *testing.T) {
		marker := filepath.Join(t.TempDir(), "ran")
		c, _ := trustSetup(t, f, fmt.Sprintf("  ProxyCommand echo %%n %%r $$ >%s; SSH_TEST_RELAY=%%h:%%p exec %s\n", marker, os.Args[0]))
		c.KnownHosts = f.KnownHosts
		cl, err := ssh.Dial(ctx, c)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer cl.Close()
		if got := output(t, cl, "echo through"); got != "through" {
			t.Errorf("output %q", got)
		}
		b, _ := os.ReadFile(marker)
		fields := strings.Fields(string(b))
		if len(fields) != 3 || fields[0] != "web" || fields[1] != f.User {
			t.Fatalf("ProxyCommand did not run with %%n %%r expanded: %q", b)
		}
		// Closing the client ends the command.
		cl.Close()
		eventually(t, 10*time.Second, "the ProxyCommand to exit after Close", func() bool {
			_, err := os.Stat("/proc/" + fields[2])
			return err != nil
		})
	})

	t.Run("a failing ProxyCommand says so", func(t *testing.T) {
		c, _ := trustSetup(t, f, "  ProxyCommand echo no route to %h >&2; exit 7\n")
		c.KnownHosts = f.KnownHosts
		refused(t, c, "ProxyCommand", "no route to "+h.Addr, "exit status 7")
	})

	t.Run("ProxyJump and ProxyCommand together are refused", func(t *testing.T) {
		c, cfg := trustSetup(t, f, "  ProxyCommand true\n  ProxyJump other\n")
		refused(t, c, "ProxyJump", "ProxyCommand", cfg)
	})

	t.Run("KnownHostsCommand is refused by name", func(t *testing.T) {
		c, cfg := trustSetup(t, f, "  KnownHostsCommand /bin/echo\n")
		refused(t, c, "KnownHostsCommand", cfg, "web")
	})
}
