package release

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// tail keeps the last lines of a step's output and forwards each line.
type tail struct {
	mu    sync.Mutex
	max   int
	lines []string
	emit  func(string)
	part  strings.Builder
}

// Write splits p into lines.
func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range p {
		if b == '\n' {
			t.line(t.part.String())
			t.part.Reset()
			continue
		}
		t.part.WriteByte(b)
	}
	return len(p), nil
}

func (t *tail) line(s string) {
	s = strings.TrimRight(s, "\r")
	if t.emit != nil {
		t.emit(s)
	}
	t.lines = append(t.lines, s)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

func (t *tail) flush() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.part.Len() > 0 {
		t.line(t.part.String())
		t.part.Reset()
	}
}

// ExitError is a command that exited non-zero.
type ExitError struct {
	Command string
	Code    int
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("command %q exited with code %d", e.Command, e.Code)
}

// runCommands runs each command with sh -c in dir, stopping at the first
// failure. Output goes to out; the whole process group is killed when ctx
// ends.
func runCommands(ctx context.Context, dir string, env []string, commands []string, out io.Writer) error {
	for _, c := range commands {
		if err := runShell(ctx, dir, env, c, nil, out, out); err != nil {
			return err
		}
	}
	return nil
}

// runShell runs one shell command in its own process group.
func runShell(ctx context.Context, dir string, env []string, command string, stdin io.Reader, stdout, stderr io.Writer) error {
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = stdin
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %q: %w", command, err)
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			}
		case <-done:
		}
	}()
	err := cmd.Wait()
	close(done)
	if ctx.Err() != nil {
		return fmt.Errorf("run %q: %w", command, ctx.Err())
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return &ExitError{Command: command, Code: ee.ExitCode()}
	}
	if err != nil {
		return fmt.Errorf("run %q: %w", command, err)
	}
	return nil
}

// lineWriter turns a writer of bytes into whole lines for the engine's events.
func lineWriter(w func(string)) *tail { return &tail{max: 20, emit: w} }

// LineWriter is an io.Writer that calls emit with each whole line written
// to it; Flush emits a last unterminated line.
type LineWriter struct{ t *tail }

// NewLineWriter returns a LineWriter calling emit.
func NewLineWriter(emit func(string)) *LineWriter { return &LineWriter{t: lineWriter(emit)} }

// Write splits p into lines.
func (w *LineWriter) Write(p []byte) (int, error) { return w.t.Write(p) }

// Flush emits what is left after the last newline.
func (w *LineWriter) Flush() { w.t.flush() }
