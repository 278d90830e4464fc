package release

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/drover/drover/internal/config"
)

// MaxLine is the longest output line, in bytes, drover keeps: the rest of
// a longer line is dropped and replaced by a marker saying how much was cut.
const MaxLine = 64 << 10

// tail keeps the last lines of a step's output and forwards each line. A
// line longer than MaxLine is cut: its first MaxLine bytes are kept with a
// marker and the rest is dropped as it arrives, so neither the partial line
// nor the kept lines grow past the bound however a command writes.
type tail struct {
	mu    sync.Mutex
	max   int
	lines []string
	emit  func(string)
	part  []byte
	cut   int // bytes of the current line dropped past MaxLine
}

// Write splits p into lines.
func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		t.add(chunk)
		if i < 0 {
			break
		}
		t.end()
		p = p[i+1:]
	}
	return n, nil
}

// add appends b to the current line, dropping what goes past MaxLine.
func (t *tail) add(b []byte) {
	room := MaxLine - len(t.part)
	if room < 0 {
		room = 0
	}
	if len(b) > room {
		t.cut += len(b) - room
		b = b[:room]
	}
	t.part = append(t.part, b...)
}

// end emits the current line, with a marker when it was cut.
func (t *tail) end() {
	s := string(t.part)
	if t.cut > 0 {
		// Do not leave half a UTF-8 character before the marker.
		cut := t.cut
		for i := 0; i < utf8.UTFMax-1 && len(s) > 0; i++ {
			r, size := utf8.DecodeLastRuneInString(s)
			if r != utf8.RuneError || size != 1 {
				break
			}
			s, cut = s[:len(s)-1], cut+1
		}
		s = fmt.Sprintf("%s … [cut %d bytes]", s, cut)
	}
	t.part, t.cut = t.part[:0], 0
	t.line(s)
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
	if len(t.part) > 0 || t.cut > 0 {
		t.end()
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

// outputGrace is how long a command's output is still read after its shell
// exited: a background process it started (`./bin/worker &`) inherits the
// output pipes and would otherwise hold the step until it exits.
const outputGrace = 2 * time.Second

// killGrace is how long a cancelled command's process group has between
// SIGTERM and SIGKILL.
const killGrace = 5 * time.Second

// runHook runs the commands of hook h in dir, all of them within the
// hook's timeout; a hook that outlives it has its process group killed.
func runHook(ctx context.Context, h *config.Hook, dir string, env []string, out io.Writer) error {
	limit := h.TimeoutOrDefault()
	hctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	err := runCommands(hctx, dir, env, h.Commands, out)
	if err != nil && ctx.Err() == nil && errors.Is(hctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("hook %s did not finish within its timeout of %s, so its processes were killed; raise hooks.%s.timeout in drover.yml if it needs longer", h.Name, limit, h.Name)
	}
	return err
}

// runShell runs one shell command in its own process group. It returns when
// the shell exits, reading its output for at most outputGrace more. When
// ctx ends first, the whole group gets SIGTERM, then SIGKILL after
// killGrace, and runShell returns once that is done.
func runShell(ctx context.Context, dir string, env []string, command string, stdin io.Reader, stdout, stderr io.Writer) error {
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = stdin
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = outputGrace
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %q: %w", command, err)
	}
	pgid := cmd.Process.Pid
	done := make(chan struct{})
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		deadline := time.Now().Add(killGrace)
		for time.Now().Before(deadline) && syscall.Kill(-pgid, 0) == nil {
			time.Sleep(20 * time.Millisecond)
		}
		// Whatever is left of the group, including background processes
		// that outlived the shell and zombies no init reaped.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}()
	err := cmd.Wait()
	close(done)
	if ctx.Err() != nil {
		<-killed
		return fmt.Errorf("run %q: %w", command, ctx.Err())
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return &ExitError{Command: command, Code: ee.ExitCode()}
	}
	if errors.Is(err, exec.ErrWaitDelay) {
		// The shell exited 0; a process it left running still holds the
		// output pipes, which are closed now.
		return nil
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
