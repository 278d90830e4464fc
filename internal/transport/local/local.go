// Package local reaches this machine without SSH: it runs `drover node
// serve` as a child process. A host with `transport: local` in drover.yml
// uses it; so do tests that need the real engine in its own process.
package local

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/drover/drover/internal/node"
)

// Conn runs the drover binary at Binary as `drover node serve`.
type Conn struct {
	Binary string   // path to the drover binary; os.Executable() in the CLI
	Env    []string // extra environment for the child (tests set DROVER_CRASH_AT)
}

// Serve runs one node request in a child process. Cancelling ctx sends the
// child SIGTERM, so it can release what it holds, then SIGKILL.
func (c *Conn) Serve(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	cmd := exec.CommandContext(ctx, c.Binary, "node", "serve")
	cmd.Stdin, cmd.Stdout = stdin, stdout
	var stderr bytes.Buffer
	cmd.Stderr = &limited{w: &stderr, n: 16 << 10}
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = node.CancelWait
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return fmt.Errorf("drover node on this machine: %w: %s", err, lastLines(msg, 5))
		}
		return fmt.Errorf("drover node on this machine: %w", err)
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// limited keeps at most n bytes.
type limited struct {
	w io.Writer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
