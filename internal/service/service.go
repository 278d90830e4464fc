// Package service starts, stops, restarts and health-checks the services of
// an app on this host (seed 004): managed processes, one per port, tracked by
// PID files under <deploy_to>/shared/pids, or systemd units.
//
// It knows nothing of SSH, HTTP servers or databases; push mode and the
// agent reach it through the release engine.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Defaults applied when a Spec or Health leaves a duration zero.
const (
	DefaultStopGrace      = 10 * time.Second
	DefaultHealthTimeout  = 30 * time.Second
	DefaultHealthInterval = 200 * time.Millisecond
	DefaultAttemptTimeout = 5 * time.Second
)

// killWait bounds how long Stop waits for a process group to vanish after
// SIGKILL; only a process stuck in the kernel takes longer.
const killWait = 10 * time.Second

// ErrAlreadyRunning is returned by Start when the service already runs on
// that port; Restart replaces a running process.
var ErrAlreadyRunning = errors.New("already running")

// ErrInvalidSpec is returned when a Spec cannot be run as given.
var ErrInvalidSpec = errors.New("invalid service spec")

// Spec describes one service of an app (from drover.yml `services:`).
type Spec struct {
	Name      string        // "web"
	Start     string        // shell command, may contain {{port}}; run with /bin/sh -c in the release dir
	Ports     []int         // one process per port; empty means one process, port 0
	Systemd   string        // if set, the service is a systemd unit: systemctl, no PID files
	Health    *Health       // optional
	StopGrace time.Duration // SIGTERM then SIGKILL after this (default 10s)
	// Socket makes drover's supervisor hold the listening socket of each
	// port and hand it to the process (LISTEN_FDS=1, fd 3), so a restart
	// starts the new process before it stops the old one (see socket.go).
	Socket bool
	Bind   string // address the held sockets listen on; empty: every address
	// ReusePort says the app binds its port with SO_REUSEPORT, so a restart
	// starts the new process beside the old one and stops the old one once
	// the new one is healthy. Without Socket, the old process's queued
	// connections may still be reset when it closes its socket.
	ReusePort bool
}

// Restart kinds, as Process.Restart and `drover tasks` name them.
const (
	RestartSocket     = "socket handoff: new process on the held socket, healthy, then old one stopped"
	RestartReusePort  = "start before stop: new process beside the old (SO_REUSEPORT), healthy, then old one stopped"
	RestartPlain      = "stop, then start (a port refuses connections in between)"
	RestartUnit       = "systemctl restart"
	RestartUnitSocket = "systemctl restart, its .socket unit holding the socket meanwhile (connections wait, none refused)"
)

// RestartKind says how Restart moves s to a new release.
func (s Spec) RestartKind() string {
	switch {
	case s.Systemd != "" && s.Socket:
		return RestartUnitSocket
	case s.Systemd != "":
		return RestartUnit
	case s.Socket:
		return RestartSocket
	case s.ReusePort:
		return RestartReusePort
	}
	return RestartPlain
}

// Health says how to tell that one process of a service is ready.
type Health struct {
	HTTP           string        // URL with optional {{port}}; healthy = 2xx
	Command        string        // or a shell command run in the release dir; healthy = exit 0; {{port}} substituted
	Timeout        time.Duration // total time to keep retrying (default 30s)
	Interval       time.Duration // between attempts (default 200ms)
	AttemptTimeout time.Duration // one attempt (default 5s, never longer than what is left of Timeout)
	MinHealthyTime time.Duration // once healthy, the process must stay up this long and pass again at its end (default 0)
}

// Process is the state of one process of a service, as Status reports it.
type Process struct {
	Service    string    `json:"service"`
	Port       int       `json:"port,omitempty"`
	PID        int       `json:"pid,omitempty"`
	Running    bool      `json:"running"`
	Since      time.Time `json:"since,omitzero"`        // when drover started it (systemd: when the unit became active)
	ReleaseDir string    `json:"release_dir,omitempty"` // the release it runs from
	Unit       string    `json:"unit,omitempty"`        // systemd unit, for systemd services
	State      string    `json:"state,omitempty"`       // "running", "stopped", "stale" (PID file names a dead or reused PID), or systemd's ActiveState
	Log        string    `json:"log,omitempty"`         // log file of a managed process
	Error      string    `json:"error,omitempty"`       // why the state could not be read

	// Socket services only (Spec.Socket).
	Restart       string           `json:"restart,omitempty"`         // how a restart goes (RestartKind)
	Supervisor    *SupervisorState `json:"supervisor,omitempty"`      // the process holding the sockets
	NewPID        int              `json:"new_pid,omitempty"`         // a new process not yet healthy (restart in progress or interrupted)
	NewReleaseDir string           `json:"new_release_dir,omitempty"` // its release
	Listeners     []int            `json:"listeners,omitempty"`       // processes other than the supervisor holding the port's listening socket
	Orphan        bool             `json:"orphan,omitempty"`          // running, but not started by the running supervisor: its socket is held by nobody else; the next start or restart replaces it
}

// Runner runs a program and returns its combined output. Manager uses it for
// systemctl; tests may inject one that records the command line.
type Runner func(ctx context.Context, name string, args ...string) ([]byte, error)

// Manager runs the services of one app on this host. The zero value with
// SharedDir set is ready to use.
type Manager struct {
	SharedDir string       // <deploy_to>/shared: PID files in pids/, logs in log/
	Env       []string     // extra env for the processes (DROVER_* vars), appended to os.Environ() minus drover's control and SSH session variables
	Logger    *slog.Logger // nil discards
	Run       Runner       // runs systemctl; nil runs the real program
	// Supervisor returns the command that runs the supervisor of a socket
	// service (`drover node supervise --pids DIR --service NAME`); nil runs
	// this binary's.
	Supervisor func(pidsDir, service string) *exec.Cmd
	// Systemd reports whether systemd runs this machine (sd_booted); nil
	// looks for /run/systemd/system. Where it does, a supervisor starts in
	// a transient scope unit of its own.
	Systemd func() bool
}

func (m *Manager) log() *slog.Logger {
	if m.Logger != nil {
		return m.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// ports returns the ports s runs on: its Ports, or [0] for a portless service.
func (s Spec) ports() []int {
	if len(s.Ports) == 0 {
		return []int{0}
	}
	return s.Ports
}

func (s Spec) stopGrace() time.Duration {
	if s.StopGrace > 0 {
		return s.StopGrace
	}
	return DefaultStopGrace
}

// label names one process of a service in errors and logs.
func label(name string, port int) string {
	if port == 0 {
		return "service " + name
	}
	return fmt.Sprintf("service %s port %d", name, port)
}

func (s Spec) validate() error {
	if s.Name == "" || s.Name == "." || s.Name == ".." || strings.ContainsAny(s.Name, "/\x00") {
		return fmt.Errorf("%w: bad service name %q", ErrInvalidSpec, s.Name)
	}
	if s.Systemd != "" {
		if strings.HasPrefix(s.Systemd, "-") {
			return fmt.Errorf("%w: service %s: bad systemd unit %q", ErrInvalidSpec, s.Name, s.Systemd)
		}
		return nil
	}
	if strings.TrimSpace(s.Start) == "" {
		return fmt.Errorf("%w: service %s has neither start nor systemd", ErrInvalidSpec, s.Name)
	}
	if s.Socket && len(s.Ports) == 0 {
		return fmt.Errorf("%w: service %s: socket: true needs ports", ErrInvalidSpec, s.Name)
	}
	return nil
}

// expand substitutes {{port}} in a command or URL.
func expand(text string, port int) string {
	return strings.ReplaceAll(text, "{{port}}", strconv.Itoa(port))
}

func (m *Manager) pidsDir() string { return filepath.Join(m.SharedDir, "pids") }
func (m *Manager) logsDir() string { return filepath.Join(m.SharedDir, "log") }

// base is the file name stem of one process: <name>-<port>, or <name> for
// a portless service.
func base(name string, port int) string {
	if port == 0 {
		return name
	}
	return fmt.Sprintf("%s-%d", name, port)
}

// PIDFile returns the PID file of one process of service name.
func (m *Manager) PIDFile(name string, port int) string {
	return filepath.Join(m.pidsDir(), base(name, port)+".pid")
}

// LogFile returns the log file one process of service name appends to.
func (m *Manager) LogFile(name string, port int) string {
	return filepath.Join(m.logsDir(), base(name, port)+".log")
}

// env is the environment of a service's processes and health commands:
// drover's own, without what belongs to the drover run that starts them
// (see appEnv), then m.Env, then PORT.
func (m *Manager) env(port int) []string {
	env := append(appEnv(os.Environ()), m.Env...)
	if port != 0 {
		env = append(env, "PORT="+strconv.Itoa(port))
	}
	return env
}

// sessionVars are variables of the SSH session (or deployer) that started
// drover on the host; a service that outlives that session must not see
// them.
var sessionVars = []string{"SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "SSH_AUTH_SOCK", "SSH_ORIGINAL_COMMAND"}

// appEnv drops from environ every DROVER_* variable and every SSH session
// variable. DROVER_* in drover's own environment are its controls: the
// DROVER_RUN_ID a cancelled push kills by, agent tokens, crash points; an
// app inherits none of them, only the DROVER_* Manager.Env documents.
func appEnv(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "DROVER_") || slices.Contains(sessionVars, name) {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// Start starts one process of s on port from releaseDir, in a new session
// so that it outlives drover, with stdin from /dev/null and stdout and
// stderr appended to its log file. It fails with ErrAlreadyRunning when a
// live process holds that port's PID file; a stale PID file is replaced.
// For a systemd service it runs `systemctl start` and ignores port.
func (m *Manager) Start(ctx context.Context, s Spec, releaseDir string, port int) error {
	if err := s.validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("start %s: %w", label(s.Name, port), err)
	}

	if s.Systemd != "" {
		return m.systemctl(ctx, "start", s.Systemd)
	}
	if s.Socket {
		return m.startSocket(ctx, s, releaseDir, port)
	}
	return m.start(ctx, s, releaseDir, port, m.PIDFile(s.Name, port))
}

// start starts one process of s and records it in the PID file pidPath.
func (m *Manager) start(ctx context.Context, s Spec, releaseDir string, port int, pidPath string) error {
	what := label(s.Name, port)
	rec, st, err := inspect(pidPath)
	switch {
	case err != nil:
		return fmt.Errorf("start %s: %w", what, err)
	case st == stateRunning:
		return fmt.Errorf("start %s: %w (pid %d from %s since %s); use restart",
			what, ErrAlreadyRunning, rec.PID, rec.ReleaseDir, rec.StartedAt.Format(time.RFC3339))
	case st == stateStale:
		m.log().Warn("replacing stale PID file", "service", s.Name, "port", port, "pid", rec.pid(), "file", pidPath)
	}
	if fi, err := os.Stat(releaseDir); err != nil {
		return fmt.Errorf("start %s: release dir: %w", what, err)
	} else if !fi.IsDir() {
		return fmt.Errorf("start %s: release dir %s is not a directory", what, releaseDir)
	}
	for _, dir := range []string{m.pidsDir(), m.logsDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("start %s: %w", what, err)
		}
	}
	logPath := m.LogFile(s.Name, port)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: open log: %w", what, err)
	}
	defer logf.Close()

	command := expand(s.Start, port)
	// Not CommandContext: the process must outlive ctx and drover itself.
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Dir = releaseDir
	cmd.Env = m.env(port)
	cmd.Stdin = nil // /dev/null
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", what, err)
	}
	pid := cmd.Process.Pid
	// The child is ours and not yet reaped, so /proc/<pid> exists even if it
	// already exited.
	st0, err := readStat(pid)
	if err == nil {
		rec = &record{
			Schema:     recordSchema,
			PID:        pid,
			StartTicks: st0.startTicks,
			BootID:     bootID(),
			Service:    s.Name,
			Port:       port,
			ReleaseDir: releaseDir,
			Command:    command,
			StartedAt:  time.Now().UTC(),
		}
		err = writeRecord(pidPath, rec)
	}
	if err != nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = cmd.Wait()
		return fmt.Errorf("start %s: record pid %d: %w", what, pid, err)
	}
	// Not waited for: a later liveness check reaps it if it dies while
	// drover still runs (see alive).
	_ = cmd.Process.Release()
	m.log().Info("service started", "service", s.Name, "port", port, "pid", pid, "release", releaseDir, "log", logPath)
	return nil
}

// Stop stops one process of s: SIGTERM to its process group, SIGKILL to the
// group after s.StopGrace, and returns once the group is gone. Stopping a
// service that is not running (no PID file, or a stale one) is not an
// error. For a systemd service it runs `systemctl stop` and ignores port.
func (m *Manager) Stop(ctx context.Context, s Spec, port int) error {
	if err := s.validate(); err != nil {
		return err
	}
	if s.Systemd != "" {
		return m.systemctl(ctx, "stop", s.Systemd)
	}
	if s.Socket {
		return m.stopSocket(ctx, s, port)
	}
	if s.ReusePort {
		if err := m.dropCandidate(ctx, s, port); err != nil {
			return err
		}
	}
	return m.stopManaged(ctx, s, port)
}

// stopManaged stops the process the PID file of port names.
func (m *Manager) stopManaged(ctx context.Context, s Spec, port int) error {
	what := label(s.Name, port)
	pidPath := m.PIDFile(s.Name, port)
	rec, st, err := inspect(pidPath)
	if err != nil {
		return fmt.Errorf("stop %s: %w", what, err)
	}
	switch st {
	case stateNone:
		return nil
	case stateStale:
		m.log().Info("removing stale PID file", "service", s.Name, "port", port, "pid", rec.pid(), "file", pidPath)
		return m.removeRecord(pidPath, rec)
	}
	if err := m.terminate(ctx, s, port, rec); err != nil {
		return err
	}
	return m.removeRecord(pidPath, rec)
}

// terminate stops the process of rec: SIGTERM to its group, SIGKILL after
// s.StopGrace, and returns once the group is gone.
func (m *Manager) terminate(ctx context.Context, s Spec, port int, rec *record) error {
	what := label(s.Name, port)
	log := m.log().With("service", s.Name, "port", port, "pid", rec.PID)
	began := time.Now()
	signal(rec, syscall.SIGTERM)
	gone, err := waitUntil(ctx, s.stopGrace(), func() bool { return exited(rec) })
	if err != nil {
		return fmt.Errorf("stop %s (pid %d): %w", what, rec.PID, err)
	}
	if !gone {
		log.Warn("service ignored SIGTERM, killing", "grace", s.stopGrace())
		signal(rec, syscall.SIGKILL)
		gone, err = waitUntil(ctx, killWait, func() bool { return exited(rec) })
		if err != nil {
			return fmt.Errorf("stop %s (pid %d): %w", what, rec.PID, err)
		}
		if !gone {
			return fmt.Errorf("stop %s: pid %d still running %s after SIGKILL", what, rec.PID, killWait)
		}
	}
	log.Info("service stopped", "elapsed", time.Since(began).Round(time.Millisecond))
	return nil
}

// removeRecord removes the PID file if it still describes rec (a concurrent
// Start may have replaced it); a nil rec stands for a malformed file.
func (m *Manager) removeRecord(path string, rec *record) error {
	cur, err := readRecord(path)
	if err == nil && (rec == nil || cur.PID != rec.PID || cur.StartTicks != rec.StartTicks) {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove PID file: %w", err)
	}
	return nil
}

// signal sends sig to the process group of rec, or to the process alone if
// it left the group it was started in.
func signal(rec *record, sig syscall.Signal) {
	st, err := readStat(rec.PID)
	if err == nil && st.startTicks == rec.StartTicks && st.pgrp == rec.PID {
		if syscall.Kill(-rec.PID, sig) == nil {
			return
		}
	}
	if err == nil && st.startTicks == rec.StartTicks {
		_ = syscall.Kill(rec.PID, sig)
		return
	}
	// The leader is gone; signal what is left of its group.
	_ = syscall.Kill(-rec.PID, sig)
}

// exited reports whether the process of rec and every member of its process
// group are gone.
func exited(rec *record) bool {
	if alive(rec) {
		return false
	}
	return groupGone(rec.PID)
}

// groupGone reports whether process group pgid has no live member left.
// Zombies do not count: an orphan is a zombie until init reaps it, and some
// container inits never do.
func groupGone(pgid int) bool {
	if errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH) {
		return true
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err == nil && st.pgrp == pgid && st.state != 'Z' && st.state != 'X' {
			return false
		}
	}
	return true
}

// StartAll starts s on every port (one process for a portless service).
func (m *Manager) StartAll(ctx context.Context, s Spec, releaseDir string) error {
	if s.Systemd != "" {
		return m.Start(ctx, s, releaseDir, 0)
	}
	for _, port := range s.ports() {
		if err := m.Start(ctx, s, releaseDir, port); err != nil {
			return err
		}
	}
	return nil
}

// StopAll stops s on every port, trying all of them, and joins the errors.
func (m *Manager) StopAll(ctx context.Context, s Spec) error {
	if s.Systemd != "" {
		return m.Stop(ctx, s, 0)
	}
	var errs []error
	for _, port := range s.ports() {
		errs = append(errs, m.Stop(ctx, s, port))
	}
	return errors.Join(errs...)
}

// Restart moves every port of s to releaseDir, one port at a time: stop the
// old process, start the new one, wait until it is healthy, then the next
// port. It stops at the first failure; a failed health check is a
// *HealthError naming the port, the last status or error seen and the tail
// of the log, and leaves that port's new process running for inspection
// (the caller rolls back). Without a Health check a port counts as up when
// its process is still alive right after starting.
// For a systemd service it runs `systemctl restart` and then checks health.
func (m *Manager) Restart(ctx context.Context, s Spec, releaseDir string) error {
	if err := s.validate(); err != nil {
		return err
	}
	if s.Systemd != "" {
		if s.Socket {
			if err := m.checkSocketUnit(ctx, s); err != nil {
				return err
			}
		}
		if err := m.systemctl(ctx, "restart", s.Systemd); err != nil {
			return err
		}
		if s.Health == nil {
			return nil
		}
		for _, port := range s.ports() {
			if err := m.Check(ctx, s, port); err != nil {
				return fmt.Errorf("restart %s: %w", s.Name, err)
			}
		}
		return nil
	}
	if s.Socket || s.ReusePort {
		for _, port := range s.ports() {
			if err := m.replace(ctx, s, releaseDir, port); err != nil {
				return err
			}
		}
		return nil
	}
	for _, port := range s.ports() {
		began := time.Now()
		if err := m.Stop(ctx, s, port); err != nil {
			return fmt.Errorf("restart: %w", err)
		}
		if err := m.Start(ctx, s, releaseDir, port); err != nil {
			return fmt.Errorf("restart: %w", err)
		}
		if s.Health != nil {
			if err := m.Check(ctx, s, port); err != nil {
				return fmt.Errorf("restart %s: %w", s.Name, err)
			}
		} else if rec, st, _ := inspect(m.PIDFile(s.Name, port)); st != stateRunning {
			pid := rec.pid()
			logPath := m.LogFile(s.Name, port)
			return &HealthError{Service: s.Name, Port: port, Elapsed: time.Since(began),
				Last: fmt.Errorf("process %d exited right after starting", pid), LogFile: logPath, Tail: tailLines(logPath, tailCount)}
		}
		m.log().Info("service restarted", "service", s.Name, "port", port, "release", releaseDir,
			"elapsed", time.Since(began).Round(time.Millisecond))
	}
	return nil
}

// Status reports every process of s: one entry per port for a managed
// service, one for a systemd unit (asking systemctl, bounded to 10s).
func (m *Manager) Status(s Spec) []Process {
	if s.Systemd != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p := m.systemdStatus(ctx, s)
		if s.Socket {
			p.Restart, p.Supervisor = s.RestartKind(), m.socketUnitStatus(ctx, s)
		}
		return []Process{p}
	}
	var out []Process
	var sup *SupervisorState
	if s.Socket {
		sup = m.supervisorStatus(s)
	}
	for _, port := range s.ports() {
		p := Process{Service: s.Name, Port: port, State: "stopped", Log: m.LogFile(s.Name, port)}
		rec, st, err := inspect(m.PIDFile(s.Name, port))
		if err != nil {
			p.Error = err.Error()
		}
		if rec != nil {
			p.PID, p.Since, p.ReleaseDir = rec.PID, rec.StartedAt, rec.ReleaseDir
		}
		switch st {
		case stateRunning:
			p.Running, p.State = true, "running"
		case stateStale:
			p.State = "stale"
		}
		if s.Socket {
			m.socketStatus(s, &p, sup)
		} else if s.ReusePort {
			m.newStatus(s, &p)
		}
		out = append(out, p)
	}
	return out
}

// waitUntil polls cond, more slowly as time passes, until it holds (true),
// limit passes (false) or ctx ends (error).
func waitUntil(ctx context.Context, limit time.Duration, cond func() bool) (bool, error) {
	if cond() {
		return true, nil
	}
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	step := 5 * time.Millisecond
	tick := time.NewTimer(step)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-deadline.C:
			return cond(), nil
		case <-tick.C:
			if cond() {
				return true, nil
			}
			step = min(step*2, 100*time.Millisecond)
			tick.Reset(step)
		}
	}
}
