package ssh

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proxyConn is a connection to a host through the ssh config's
// ProxyCommand, run with sh -c as ssh(1) does: what drover sends goes to
// the command's stdin, what it prints is the server's side. Closing the
// connection ends the command's process group.
type proxyConn struct {
	command string
	addr    proxyAddr
	cmd     *exec.Cmd
	r, w    *os.File // our ends: the command's stdout and stdin
	stderr  *tailBuffer
	exited  chan struct{}
	once    sync.Once
}

// proxyAddr is the host:port a ProxyCommand reaches, as a net.Addr.
type proxyAddr string

func (a proxyAddr) Network() string { return "proxycommand" }
func (a proxyAddr) String() string  { return string(a) }

// proxyCommand expands ssh(1)'s tokens in a ProxyCommand for h: %h host,
// %p port, %r user, %n the alias as given, %% a percent sign.
func proxyCommand(command, alias string, h hop) string {
	return strings.NewReplacer("%%", "%", "%h", h.host, "%p", strconv.Itoa(h.port), "%r", h.user, "%n", alias).Replace(command)
}

// dialProxyCommand starts h's ProxyCommand and returns its stdio as a
// connection.
func dialProxyCommand(h hop) (*proxyConn, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	c := &proxyConn{command: h.proxyCommand, addr: proxyAddr(h.addr()), r: outR, w: inW, stderr: &tailBuffer{max: 2048}, exited: make(chan struct{})}
	c.cmd = exec.Command("/bin/sh", "-c", h.proxyCommand)
	c.cmd.Stdin, c.cmd.Stdout, c.cmd.Stderr = inR, outW, c.stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.cmd.WaitDelay = time.Second // a child of the command may hold stderr
	err = c.cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		outR.Close()
		inW.Close()
		return nil, fmt.Errorf("ProxyCommand %q: %w", h.proxyCommand, err)
	}
	go func() {
		_ = c.cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

func (c *proxyConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *proxyConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// Close ends the command: EOF on its stdin, SIGTERM to its process
// group, SIGKILL if it has not exited a second later.
func (c *proxyConn) Close() error {
	c.once.Do(func() {
		c.w.Close()
		c.r.Close()
		pid := c.cmd.Process.Pid
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(time.Second):
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			<-c.exited
		}
	})
	return nil
}

func (c *proxyConn) LocalAddr() net.Addr  { return proxyAddr("proxycommand") }
func (c *proxyConn) RemoteAddr() net.Addr { return c.addr }

func (c *proxyConn) SetDeadline(t time.Time) error {
	return errors.Join(c.r.SetReadDeadline(t), c.w.SetWriteDeadline(t))
}
func (c *proxyConn) SetReadDeadline(t time.Time) error  { return c.r.SetReadDeadline(t) }
func (c *proxyConn) SetWriteDeadline(t time.Time) error { return c.w.SetWriteDeadline(t) }

// failure describes how the command ended, for a failed handshake: its
// exit status and the last of its stderr, or "" while it still runs.
func (c *proxyConn) failure() string {
	select {
	case <-c.exited:
	case <-time.After(100 * time.Millisecond):
		return ""
	}
	msg := fmt.Sprintf("ProxyCommand %q exited (%v)", c.command, c.cmd.ProcessState)
	if tail := strings.TrimSpace(c.stderr.String()); tail != "" {
		msg += ": " + tail
	}
	return msg
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	b   []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
