// Package ssh is drover's connection to a host in push mode: one SSH
// connection per host, opened once and reused for every step of a deploy,
// each step a new session on it. It reads the OpenSSH client config and
// known_hosts the way ssh(1) does, authenticates with key files and
// ssh-agent, and turns every failure into an error that says what to do.
package ssh

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// keepAliveInterval is how often an idle connection is probed, so NAT and
// firewalls keep it open through long steps and a dead host is noticed.
const keepAliveInterval = 30 * time.Second

// Client is one SSH connection to a host, safe for concurrent Runs.
type Client struct {
	name string // display name
	addr string // host:port of the server
	user string
	conn *gossh.Client
	jump *gossh.Client // the ProxyJump hop, or nil
	log  *slog.Logger

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// ExitError is a remote command that ran and failed.
type ExitError struct {
	Host   string // display name of the host
	Cmd    string // the command, shortened
	Code   int    // exit status; -1 when killed by a signal
	Signal string // the signal that killed it, e.g. "TERM", or ""
}

// Error says which command failed on which host, and how.
func (e *ExitError) Error() string {
	if e.Signal != "" {
		return fmt.Sprintf("%s: %s: killed by signal %s", e.Host, e.Cmd, e.Signal)
	}
	return fmt.Sprintf("%s: %s: exit status %d", e.Host, e.Cmd, e.Code)
}

// Dial connects and authenticates to c.Host, through its ProxyJump host
// if the ssh config names one. Errors are *HostKeyError for an untrusted
// host key and *AuthError when no key was accepted.
func Dial(ctx context.Context, c Config) (*Client, error) {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c.Logger = log
	sc, err := loadSSHConfig(c.SSHConfig)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", displayName(c), err)
	}
	h, err := resolve(c, sc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", displayName(c), err)
	}
	var jump *gossh.Client
	if h.proxyJump != "" {
		jc, err := jumpConfig(c, h.proxyJump)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", h.name, err)
		}
		jh, err := resolve(jc, sc)
		if err != nil {
			return nil, fmt.Errorf("%s: jump host: %w", h.name, err)
		}
		jh.proxyJump = ""
		if jump, err = dialHop(ctx, jh, nil, log); err != nil {
			return nil, fmt.Errorf("%s: via ProxyJump %s: %w", h.name, h.proxyJump, err)
		}
	}
	conn, err := dialHop(ctx, h, jump, log)
	if err != nil {
		if jump != nil {
			jump.Close()
			return nil, fmt.Errorf("%s (via %s): %w", h.name, h.proxyJump, err)
		}
		return nil, fmt.Errorf("%s: %w", h.name, err)
	}
	cl := &Client{name: h.name, addr: h.addr(), user: h.user, conn: conn, jump: jump, log: log, stop: make(chan struct{})}
	cl.wg.Add(1)
	go cl.keepAlive()
	log.Debug("ssh connected", "host", h.name, "addr", h.addr(), "user", h.user, "jump", h.proxyJump)
	return cl, nil
}

func displayName(c Config) string {
	if c.Name != "" {
		return c.Name
	}
	return c.Host
}

// dialHop opens one authenticated SSH connection to h: directly, through
// via, or over the stdio of h's ProxyCommand.
func dialHop(ctx context.Context, h hop, via *gossh.Client, log *slog.Logger) (*gossh.Client, error) {
	addr := h.addr()
	hk, err := newHostKeyChecker(h.trust, log)
	if err != nil {
		return nil, err
	}
	ks, err := h.loadKeys()
	if err != nil {
		return nil, err
	}
	defer ks.close()

	dctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	var conn net.Conn
	var proxy *proxyConn
	switch {
	case h.proxyCommand != "":
		proxy, err = dialProxyCommand(h)
		conn = proxy
	case via != nil:
		conn, err = via.DialContext(dctx, "tcp", addr)
	default:
		var d net.Dialer
		conn, err = d.DialContext(dctx, "tcp", addr)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect to %s: %w", addr, ctx.Err())
		}
		return nil, fmt.Errorf("cannot reach %s: %w", addr, err)
	}
	// The handshake honours both the dial timeout and ctx.
	_ = conn.SetDeadline(time.Now().Add(h.timeout))
	stopWatch := context.AfterFunc(dctx, func() { conn.Close() })
	cfg := &gossh.ClientConfig{
		User:              h.user,
		Auth:              []gossh.AuthMethod{gossh.PublicKeys(ks.signers...)},
		HostKeyCallback:   hk.check,
		HostKeyAlgorithms: hk.algorithms(addr),
		Timeout:           h.timeout,
	}
	c, chans, reqs, err := gossh.NewClientConn(conn, addr, cfg)
	if !stopWatch() || err != nil {
		conn.Close()
		switch {
		case hk.refused != nil:
			return nil, hk.refused
		case ctx.Err() != nil:
			return nil, fmt.Errorf("ssh handshake with %s: %w", addr, ctx.Err())
		case err == nil || dctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded):
			return nil, fmt.Errorf("ssh handshake with %s: timed out after %s (is an SSH server listening there?)", addr, h.timeout)
		case strings.Contains(err.Error(), "unable to authenticate"):
			return nil, &AuthError{User: h.user, Host: addr, Methods: ks.tried, Err: err}
		case proxy != nil && proxy.failure() != "":
			return nil, fmt.Errorf("ssh handshake with %s: %w; %s", addr, err, proxy.failure())
		default:
			return nil, fmt.Errorf("ssh handshake with %s: %w", addr, err)
		}
	}
	_ = conn.SetDeadline(time.Time{})
	return gossh.NewClient(c, chans, reqs), nil
}

// keepAlive probes the server while the connection is idle and closes it
// when the server stops answering, so Runs fail instead of hanging.
func (c *Client) keepAlive() {
	defer c.wg.Done()
	t := time.NewTicker(keepAliveInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		reply := make(chan error, 1)
		go func() {
			_, _, err := c.conn.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		}()
		select {
		case <-c.stop:
			return
		case err := <-reply:
			if err != nil {
				c.log.Warn("ssh connection lost", "host", c.name, "err", err)
				_ = c.conn.Close()
				return
			}
		case <-time.After(keepAliveInterval):
			c.log.Warn("ssh keepalive unanswered; closing connection", "host", c.name, "after", keepAliveInterval)
			_ = c.conn.Close()
			return
		}
	}
}

// Run runs cmd through the remote user's shell in a new session, streaming
// stdin to it (then EOF) and its output to stdout and stderr (nil
// discards). A non-zero exit is an *ExitError.
//
// Cancelling ctx stops the command and everything it started, then
// returns ctx's error: the command runs with DROVER_RUN_ID set to a random
// token, and a second session sends SIGTERM (SIGKILL after killGrace) to
// every process on the host carrying it (services drover starts do not
// carry it: internal/service drops every inherited DROVER_* variable, so a
// cancel never stops an app). An SSH "signal" request alone
// is not enough: OpenSSH ignores it for root logins, and closing the
// channel leaves the command running.
func (c *Client) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
	return c.RunGraceful(ctx, killGrace, cmd, stdin, stdout, stderr)
}

// RunGraceful is Run for a command that needs time to end well once it is
// cancelled: after SIGTERM it has grace (at least killGrace) to exit, and
// its output keeps streaming meanwhile, before anything gets SIGKILL.
// `drover node serve` takes that time to switch a host back to a serving
// release and to say so.
func (c *Client) RunGraceful(ctx context.Context, grace time.Duration, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
	short := shorten(cmd)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: run %s: %w", c.name, short, err)
	}
	s, err := c.conn.NewSession()
	if err != nil {
		return fmt.Errorf("%s: open session for %s: %w", c.name, short, err)
	}
	defer s.Close()
	s.Stdin, s.Stdout, s.Stderr = stdin, stdout, stderr
	token := randomToken()
	start := time.Now()
	if err := s.Start("DROVER_RUN_ID=" + token + "; export DROVER_RUN_ID; " + cmd); err != nil {
		return fmt.Errorf("%s: start %s: %w", c.name, short, err)
	}
	// The waiter ends when the session does: normally before Run returns;
	// after a cancel whose command would not die, when Close ends the
	// connection.
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		c.stopRemote(s, token, done, max(grace, killGrace))
		c.log.Debug("ssh command cancelled", "host", c.name, "cmd", short, "elapsed", time.Since(start))
		return fmt.Errorf("%s: run %s: %w", c.name, short, ctx.Err())
	}
	c.log.Debug("ssh command done", "host", c.name, "cmd", short, "elapsed", time.Since(start), "err", err)
	var ee *gossh.ExitError
	var missing *gossh.ExitMissingError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee):
		xe := &ExitError{Host: c.name, Cmd: short, Code: ee.ExitStatus(), Signal: ee.Signal()}
		if xe.Signal != "" {
			xe.Code = -1
		}
		return xe
	case errors.As(err, &missing):
		return fmt.Errorf("%s: run %s: the connection ended before the command reported how it exited: %w", c.name, short, err)
	default:
		return fmt.Errorf("%s: run %s: %w", c.name, short, err)
	}
}

// killGrace is how long a cancelled command has to exit after SIGTERM
// before it gets SIGKILL.
const killGrace = 5 * time.Second

// stopRemote ends a cancelled command: SIGTERM, then SIGKILL after grace,
// each through the session and by DROVER_RUN_ID. It returns once the
// session ended or both grace periods passed; the goroutine waiting on the
// session ends at the latest when the connection closes.
func (c *Client) stopRemote(s *gossh.Session, token string, done <-chan error, grace time.Duration) {
	for _, step := range []struct {
		sig  gossh.Signal
		wait time.Duration
	}{{gossh.SIGTERM, grace}, {gossh.SIGKILL, killGrace}} {
		_ = s.Signal(step.sig)
		c.signalRun(token, step.sig)
		select {
		case <-done:
			return
		case <-time.After(step.wait):
		}
	}
	c.log.Warn("cancelled command did not end", "host", c.name, "run_id", token)
}

// signalRun sends sig to every process whose environment holds
// DROVER_RUN_ID=token, using a separate session (Linux hosts: /proc).
func (c *Client) signalRun(token string, sig gossh.Signal) {
	s, err := c.conn.NewSession()
	if err != nil {
		c.log.Warn("cannot stop cancelled command", "host", c.name, "err", err)
		return
	}
	defer s.Close()
	script := fmt.Sprintf(`for f in $(grep -lzx 'DROVER_RUN_ID=%s' /proc/[0-9]*/environ 2>/dev/null); do p=${f#/proc/}; kill -%s "${p%%/environ}" 2>/dev/null; done; true`, token, sig)
	finished := make(chan error, 1)
	go func() { finished <- s.Run(script) }()
	select {
	case err := <-finished:
		if err != nil {
			c.log.Warn("cannot stop cancelled command", "host", c.name, "err", err)
		}
	case <-time.After(killGrace):
		c.log.Warn("stopping cancelled command timed out", "host", c.name)
		// The deferred s.Close ends the session; the goroutine ends with it.
	}
}

func randomToken() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Close closes the connection (and its ProxyJump hop); sessions still
// running end.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		close(c.stop)
		c.closeErr = c.conn.Close()
		if c.jump != nil {
			_ = c.jump.Close()
		}
		c.wg.Wait()
	})
	return c.closeErr
}

// shorten keeps commands readable in errors and logs.
func shorten(cmd string) string {
	cmd = strings.Join(strings.Fields(cmd), " ")
	if len(cmd) > 60 {
		cmd = cmd[:57] + "..."
	}
	return fmt.Sprintf("%q", cmd)
}
