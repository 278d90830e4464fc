package service

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// tailCount is how many log lines a HealthError carries.
const tailCount = 20

// HealthError is returned when a process did not become healthy in time.
type HealthError struct {
	Service  string
	Port     int
	Elapsed  time.Duration // how long the check ran
	Attempts int
	Last     error    // the last status or error seen
	LogFile  string   // the process's log file, for managed services
	Tail     []string // its last lines
}

// Error says which process failed, how, and what it last logged.
func (e *HealthError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s not healthy after %s", label(e.Service, e.Port), e.Elapsed.Round(time.Millisecond))
	if e.Attempts > 0 {
		fmt.Fprintf(&b, " (%d attempts)", e.Attempts)
	}
	fmt.Fprintf(&b, ": last: %v", e.Last)
	if len(e.Tail) > 0 {
		fmt.Fprintf(&b, "\nlast lines of %s:", e.LogFile)
		for _, l := range e.Tail {
			b.WriteString("\n  " + l)
		}
	}
	return b.String()
}

// Unwrap returns the last error seen.
func (e *HealthError) Unwrap() error { return e.Last }

// ErrUnhealthyStatus is wrapped by the last error of an HTTP check that got
// an answer outside 2xx.
var ErrUnhealthyStatus = errors.New("unhealthy HTTP status")

// ErrExited is the last error of a check on a managed process that died.
var ErrExited = errors.New("process exited")

// Check runs the health check of s on port, retrying every Interval until
// it passes or Timeout passes; errors such as "connection refused" while the
// process boots are retried. A failure is a *HealthError with the last
// status or error seen. A managed process that dies meanwhile fails the
// check at once. A service without a Health check passes.
func (m *Manager) Check(ctx context.Context, s Spec, port int) error {
	return m.check(ctx, s, port, nil)
}

// check is Check; with a new process cand (a restart on a held socket), only
// answers from cand's process group count, and cand's release dir is where a
// health command runs.
func (m *Manager) check(ctx context.Context, s Spec, port int, cand *record) error {
	h := s.Health
	if h == nil {
		return nil
	}
	if h.HTTP == "" && h.Command == "" {
		return fmt.Errorf("%w: service %s: health has neither http nor command", ErrInvalidSpec, s.Name)
	}
	timeout, interval, attempt := h.Timeout, h.Interval, h.AttemptTimeout
	if timeout <= 0 {
		timeout = DefaultHealthTimeout
	}
	if interval <= 0 {
		interval = DefaultHealthInterval
	}
	if attempt <= 0 {
		attempt = DefaultAttemptTimeout
	}

	managed := s.Systemd == ""
	pidPath, logPath := m.PIDFile(s.Name, port), m.LogFile(s.Name, port)
	dir := filepath.Join(filepath.Dir(m.SharedDir), "current")
	var rec *record
	if cand != nil {
		rec, dir = cand, cand.ReleaseDir
	} else if managed {
		if r, _, _ := inspect(pidPath); r != nil {
			rec, dir = r, r.ReleaseDir
		}
	}
	probe := func(ctx context.Context) error { return m.probeCommand(ctx, expand(h.Command, port), dir, port) }
	if h.HTTP != "" {
		tr := &http.Transport{DisableKeepAlives: true} // no proxy: health checks are local
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr}
		url := expand(h.HTTP, port)
		probe = func(ctx context.Context) error { return probeHTTP(ctx, client, url) }
		if cand != nil {
			probe = func(ctx context.Context) error { return probeHTTPFrom(ctx, url, cand.PID) }
		}
	}

	log := m.log().With("service", s.Name, "port", port)
	began := time.Now()
	deadline := began.Add(timeout)
	fail := func(attempts int, last error) error {
		e := &HealthError{Service: s.Name, Port: port, Elapsed: time.Since(began), Attempts: attempts, Last: last}
		if managed {
			e.LogFile, e.Tail = logPath, tailLines(logPath, tailCount)
		}
		log.Warn("health check failed", "attempts", attempts, "last", last, "elapsed", e.Elapsed.Round(time.Millisecond))
		return e
	}
	var last error
	tick := time.NewTimer(0)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return fmt.Errorf("health check %s: %w (last: %v)", label(s.Name, port), ctx.Err(), last)
		case <-tick.C:
		}
		left := time.Until(deadline)
		actx, cancel := context.WithTimeout(ctx, max(min(attempt, left), time.Millisecond))
		err := probe(actx)
		cutShort := err != nil && actx.Err() != nil && left < attempt
		cancel()
		// An attempt the overall deadline cut short says less than the one
		// before it did, and so does an answer from the old process on a
		// held socket.
		if (!cutShort && !errors.Is(err, errOtherAnswered)) || last == nil {
			last = err
		}
		if err == nil {
			log.Info("healthy", "attempts", n, "elapsed", time.Since(began).Round(time.Millisecond))
			if h.MinHealthyTime <= 0 {
				return nil
			}
			return m.stayHealthy(ctx, h.MinHealthyTime, rec, probe, func(last error) error { return fail(n, last) })
		}
		if ctx.Err() != nil {
			return fmt.Errorf("health check %s: %w (last: %v)", label(s.Name, port), ctx.Err(), last)
		}
		if rec != nil && !alive(rec) {
			return fail(n, fmt.Errorf("%w: pid %d (%v)", ErrExited, rec.PID, last))
		}
		left = time.Until(deadline)
		if left <= 0 {
			return fail(n, last)
		}
		log.Debug("not healthy yet", "attempt", n, "last", last)
		tick.Reset(min(interval, left))
	}
}

// stayHealthy waits min, failing at once if the process of rec exits, and
// probes once more at its end: a process that passes its check and then
// crashes (a failed worker boot, a panic on first use) does not count.
func (m *Manager) stayHealthy(ctx context.Context, min time.Duration, rec *record, probe func(context.Context) error, fail func(error) error) error {
	began := time.Now()
	died, err := waitUntil(ctx, min, func() bool { return rec != nil && !alive(rec) })
	if err != nil {
		return err
	}
	if died {
		return fail(fmt.Errorf("%w: pid %d, %s after it became healthy (min_healthy_time %s)", ErrExited, rec.PID, time.Since(began).Round(time.Millisecond), min))
	}
	var last error
	for range 100 { // the old process on the same socket may answer: ask again
		pctx, cancel := context.WithTimeout(ctx, DefaultAttemptTimeout)
		last = probe(pctx)
		cancel()
		if !errors.Is(last, errOtherAnswered) {
			break
		}
	}
	if last != nil {
		return fail(fmt.Errorf("healthy, then not after min_healthy_time %s: %w", min, last))
	}
	return nil
}

func probeHTTP(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("health URL: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	msg := strings.Join(strings.Fields(string(body)), " ")
	if msg != "" {
		msg = ": " + msg
	}
	return fmt.Errorf("%w: GET %s: %s%s", ErrUnhealthyStatus, url, resp.Status, msg)
}

// probeCommand runs a health command with sh -c in dir; it passes when the
// command exits 0. Its process group is killed when ctx ends.
func (m *Manager) probeCommand(ctx context.Context, command, dir string, port int) error {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Dir = dir
	cmd.Env = m.env(port)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	if l := lastLine(out); l != "" {
		return fmt.Errorf("health command %q: %w: %s", command, err, l)
	}
	return fmt.Errorf("health command %q: %w", command, err)
}

func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// tailLines returns up to n last lines of the file at path, reading at most
// its last 64 KiB. A missing file has no lines.
func tailLines(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	const window = 64 << 10
	partial := false
	if fi, err := f.Stat(); err == nil && fi.Size() > window {
		if _, err := f.Seek(fi.Size()-window, io.SeekStart); err != nil {
			return nil
		}
		partial = true
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), window)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if partial && len(lines) > 0 {
		lines = lines[1:] // cut mid-line by the window
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
