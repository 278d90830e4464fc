// Package command drives any load balancer a team already scripts: three
// shell commands from drover.yml, run with sh -c on the machine that runs
// the rollout.
//
//	load_balancer:
//	  type: command
//	  drain:  "lbctl disable shop {{member}}"
//	  enable: "lbctl enable shop {{member}}"
//	  status: "lbctl list shop"
//	  timeout: 30s
//
// drain and enable get the member's name in place of {{member}} and in the
// environment variable DROVER_LB_MEMBER; they succeed by exiting 0. status
// prints one line per member of the pool, fields separated by blanks:
//
//	NAME STATE [ACTIVE]
//
// STATE is up (enabled and passing its health check), down (enabled,
// failing its health check) or drain (taken out by drain, or otherwise not
// taking new requests); ACTIVE, optional, is the number of connections or
// requests the member still serves. Without ACTIVE drover cannot wait for
// in-flight work: a drained member counts as idle at once. Empty lines and
// lines starting with # are ignored; any other line is an error.
//
// Every command is bounded by the timeout (default 30s): when it passes,
// the command's whole process group is killed. A failing command's output
// is quoted in the error.
package command

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/drover/drover/internal/lb"
)

// DefaultTimeout bounds each command unless Config.Timeout says otherwise.
const DefaultTimeout = 30 * time.Second

// Config is the three commands and their bound.
type Config struct {
	Drain, Enable, Status string
	// Timeout bounds each command; 0 means DefaultTimeout.
	Timeout time.Duration
}

// Balancer runs the configured commands.
type Balancer struct {
	c Config
}

// New returns a Balancer that runs c's commands.
func New(c Config) *Balancer {
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	return &Balancer{c: c}
}

// safeName is what may be pasted into a shell command for {{member}}.
var safeName = regexp.MustCompile(`^[A-Za-z0-9._:@/-]+$`)

// Members runs the status command and parses its lines.
func (b *Balancer) Members(ctx context.Context) ([]lb.Member, error) {
	out, err := b.run(ctx, "status", b.c.Status, "")
	if err != nil {
		return nil, err
	}
	ms, err := ParseStatus(out)
	if err != nil {
		return nil, fmt.Errorf("lb command status %q: %w", b.c.Status, err)
	}
	return ms, nil
}

// Drain runs the drain command for member.
func (b *Balancer) Drain(ctx context.Context, member string) error {
	return b.act(ctx, "drain", b.c.Drain, member)
}

// Enable runs the enable command for member.
func (b *Balancer) Enable(ctx context.Context, member string) error {
	return b.act(ctx, "enable", b.c.Enable, member)
}

// act checks with the status command that member exists, then runs cmd.
func (b *Balancer) act(ctx context.Context, verb, cmd, member string) error {
	if !safeName.MatchString(member) {
		return fmt.Errorf("lb command %s: member name %q has characters drover will not paste into a shell command; use letters, digits and . _ : @ / - in lb_name", verb, member)
	}
	ms, err := b.Members(ctx)
	if err != nil {
		return fmt.Errorf("lb command %s %s: %w", verb, member, err)
	}
	found := false
	for _, m := range ms {
		found = found || m.Name == member
	}
	if !found {
		return fmt.Errorf("lb command %s: %q: %w (the status command %q does not list it)", verb, member, lb.ErrUnknownMember, b.c.Status)
	}
	_, err = b.run(ctx, verb, strings.ReplaceAll(cmd, "{{member}}", member), member)
	return err
}

// run runs one command with sh -c in its own process group, bounded by the
// timeout, and returns its stdout.
func (b *Balancer) run(ctx context.Context, verb, cmdline, member string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, b.c.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", cmdline)
	cmd.Env = os.Environ()
	if member != "" {
		cmd.Env = append(cmd.Env, "DROVER_LB_MEMBER="+member)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if err == nil {
		return stdout.String(), nil
	}
	what := fmt.Sprintf("lb command %s", verb)
	if member != "" {
		what += " " + member
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("timed out after %s (raise load_balancer.timeout if it needs longer)", b.c.Timeout)
	}
	out := strings.TrimSpace(stderr.String() + "\n" + stdout.String())
	if len(out) > 2000 {
		out = "..." + out[len(out)-2000:]
	}
	if out != "" {
		return "", fmt.Errorf("%s: %q: %w\n%s", what, cmdline, err, out)
	}
	return "", fmt.Errorf("%s: %q: %w", what, cmdline, err)
}

// ParseStatus reads the status command's output: one "NAME STATE [ACTIVE]"
// line per member (see the package documentation).
func ParseStatus(out string) ([]lb.Member, error) {
	var ms []lb.Member
	seen := map[string]bool{}
	for i, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || len(f) > 3 {
			return nil, fmt.Errorf("line %d %q: want NAME up|down|drain [ACTIVE]", i+1, line)
		}
		m := lb.Member{Name: f[0], Active: -1, Detail: strings.Join(f[1:], " ")}
		switch strings.ToLower(f[1]) {
		case "up":
			m.Enabled, m.Healthy = true, true
		case "down":
			m.Enabled = true
		case "drain":
		default:
			return nil, fmt.Errorf("line %d %q: state %q is not up, down or drain", i+1, line, f[1])
		}
		if len(f) == 3 {
			n, err := strconv.Atoi(f[2])
			if err != nil || n < 0 {
				return nil, fmt.Errorf("line %d %q: ACTIVE %q is not a count of connections", i+1, line, f[2])
			}
			m.Active = n
		}
		m.Draining = !m.Enabled && m.Active > 0
		if seen[m.Name] {
			return nil, fmt.Errorf("line %d %q: member %s listed twice", i+1, line, m.Name)
		}
		seen[m.Name] = true
		ms = append(ms, m)
	}
	return ms, nil
}
