package service

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Socket services (Spec.Socket): drover's supervisor holds the listening
// sockets, so a restart starts the new process on the same socket, waits
// until it is healthy, and only then stops the old one. Connections keep
// queueing on the socket throughout: none is refused, and the old process
// finishes what it accepted.
//
// Files per process under shared/pids: <service>-<port>.pid names the
// process that serves; <service>-<port>.next.pid names a new process
// during a restart, until it is healthy and replaces the first. If the
// drover restarting dies first, the supervisor stops the new process (its
// control connection closed before "keep"); a next.pid left behind (by a
// reuse_port restart, or a supervisor that died too) is stopped by the next
// start, restart or stop. A ReusePort service (Spec.ReusePort) restarts the
// same way, with a process that binds the port itself beside the old one.

// supervisorWait bounds how long a new supervisor may take to answer.
const supervisorWait = 10 * time.Second

// nextPIDFile returns the PID file of the new process during a restart.
func (m *Manager) nextPIDFile(name string, port int) string {
	return filepath.Join(m.pidsDir(), base(name, port)+".next.pid")
}

// SupervisorLog returns the log file of the supervisor of service name.
func (m *Manager) SupervisorLog(name string) string {
	return filepath.Join(m.logsDir(), name+"-supervisor.log")
}

// supervisorCommand returns the command that runs the supervisor of
// service: Manager.Supervisor, or this binary's `node supervise`.
func (m *Manager) supervisorCommand(service string) (*exec.Cmd, error) {
	if m.Supervisor != nil {
		return m.Supervisor(m.pidsDir(), service), nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the drover binary to run the supervisor: %w", err)
	}
	return exec.Command(exe, "node", "supervise", "--pids", m.pidsDir(), "--service", service), nil
}

// supervisorUp reports whether the supervisor of s answers.
func (m *Manager) supervisorUp(ctx context.Context, s Spec) bool {
	_, err := askSupervisor(ctx, m.pidsDir(), s.Name, &supRequest{Op: opPing})
	return err == nil
}

// ensureSupervisor starts the supervisor of s unless it answers already.
func (m *Manager) ensureSupervisor(ctx context.Context, s Spec) error {
	if m.supervisorUp(ctx, s) {
		return nil
	}
	if sock := supervisorSocket(m.pidsDir(), s.Name); len(sock) > maxSocketPath {
		return fmt.Errorf("service %s: socket: true needs a control socket at %s, %d bytes, more than a unix socket takes (%d): use a shorter deploy_to",
			s.Name, sock, len(sock), maxSocketPath)
	}
	for _, dir := range []string{m.pidsDir(), m.logsDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("start supervisor of %s: %w", s.Name, err)
		}
	}
	if rec, st, _ := inspect(supervisorPIDFile(m.pidsDir(), s.Name)); st == stateRunning {
		// Alive but not answering: stuck. Its sockets go with it; the
		// processes it started keep theirs and are replaced below.
		m.log().Warn("supervisor does not answer, killing it", "service", s.Name, "pid", rec.PID)
		signal(rec, syscall.SIGKILL)
		_, _ = waitUntil(ctx, killWait, func() bool { return !alive(rec) })
	}
	logPath := m.SupervisorLog(s.Name)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("start supervisor of %s: %w", s.Name, err)
	}
	defer logf.Close()
	scoped := m.systemdRunning()
	for {
		cmd, err := m.supervisorCommand(s.Name)
		if err != nil {
			return err
		}
		if scoped {
			if cmd, err = m.inOwnScope(cmd, s.Name); err != nil {
				m.log().Warn("cannot start the supervisor in a scope unit of its own; restarting the unit that runs drover may stop the app", "service", s.Name, "err", err)
				scoped = false
				continue
			}
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, logf, logf
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start supervisor of %s: %w", s.Name, err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }() // reap it if it dies while we run
		up, err := waitUntil(ctx, supervisorWait, func() bool {
			select {
			case <-exited:
				return true
			default:
			}
			return m.supervisorUp(ctx, s)
		})
		select {
		case <-exited:
			if scoped {
				// systemd-run could not make the scope (no bus for
				// this user, say): start it as drover always could.
				m.log().Warn("systemd-run could not start the supervisor in a scope unit of its own; starting it without; restarting the unit that runs drover may stop the app", "service", s.Name, "log", logPath)
				scoped = false
				continue
			}
			return fmt.Errorf("supervisor of %s exited at start; last lines of %s:\n  %s", s.Name, logPath, joinTail(tailLines(logPath, 5)))
		default:
		}
		if err != nil {
			return fmt.Errorf("start supervisor of %s: %w", s.Name, err)
		}
		if !up {
			return fmt.Errorf("supervisor of %s (pid %d) did not answer within %s; see %s", s.Name, cmd.Process.Pid, supervisorWait, logPath)
		}
		m.log().Info("supervisor started", "service", s.Name, "pid", cmd.Process.Pid, "log", logPath, "own_scope", scoped)
		return nil
	}
}

// systemdRunning reports whether systemd runs this machine.
func (m *Manager) systemdRunning() bool {
	if m.Systemd != nil {
		return m.Systemd()
	}
	fi, err := os.Stat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// inOwnScope wraps cmd in `systemd-run --scope`, so the supervisor and the
// app processes it starts live in a transient scope unit of their own: a
// `systemctl restart drover-agent` (or of any unit that ran this drover)
// then leaves them alone. The unit is named for the service and its
// deploy_to, and collected when it ends.
func (m *Manager) inOwnScope(cmd *exec.Cmd, service string) (*exec.Cmd, error) {
	run, err := exec.LookPath("systemd-run")
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(m.pidsDir()))
	unit := fmt.Sprintf("drover-%s-%x.scope", unitSafe(service), sum[:4])
	args := []string{"--scope", "--quiet", "--collect", "--unit", unit, "--description", "drover supervisor of " + service + " (" + m.pidsDir() + ")"}
	if os.Geteuid() != 0 {
		args = append([]string{"--user"}, args...)
	}
	args = append(append(args, "--", cmd.Path), cmd.Args[1:]...)
	wrapped := exec.Command(run, args...)
	wrapped.Env = cmd.Env
	return wrapped, nil
}

// unitSafe keeps the characters a systemd unit name may hold.
func unitSafe(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, s)
}

func joinTail(lines []string) string {
	out := ""
	for i, l := range lines {
		if i > 0 {
			out += "\n  "
		}
		out += l
	}
	return out
}

// settle ends a restart's hold on its new process: keep says it stays.
type settle func(keep bool) error

// spawn asks the supervisor for a new process of s on port from releaseDir
// and records it in the next PID file. The supervisor stops the process
// unless settle(true) is called: a drover killed mid-restart leaves no
// second release serving.
func (m *Manager) spawn(ctx context.Context, s Spec, releaseDir string, port int) (*record, settle, error) {
	what := label(s.Name, port)
	if fi, err := os.Stat(releaseDir); err != nil {
		return nil, nil, fmt.Errorf("start %s: release dir: %w", what, err)
	} else if !fi.IsDir() {
		return nil, nil, fmt.Errorf("start %s: release dir %s is not a directory", what, releaseDir)
	}
	command := expand(s.Start, port)
	resp, conn, err := dialSupervisor(ctx, m.pidsDir(), s.Name, &supRequest{
		Op: opSpawn, Port: port, Bind: s.Bind, Command: command, Dir: releaseDir,
		Env: m.env(port), Log: m.LogFile(s.Name, port), FDName: base(s.Name, port), Hold: true,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", what, err)
	}
	done := func(keep bool) error {
		if !keep {
			return conn.Close()
		}
		if err := keepSpawned(conn); err != nil {
			return fmt.Errorf("start %s: tell the supervisor to keep pid %d: %w", what, resp.PID, err)
		}
		return nil
	}
	rec := &record{Schema: recordSchema, PID: resp.PID, StartTicks: resp.StartTicks, BootID: bootID(),
		Service: s.Name, Port: port, ReleaseDir: releaseDir, Command: command, StartedAt: time.Now().UTC()}
	if err := writeRecord(m.nextPIDFile(s.Name, port), rec); err != nil {
		_ = done(false)
		return nil, nil, fmt.Errorf("start %s: record pid %d: %w", what, rec.PID, err)
	}
	m.log().Info("process started on the held socket", "service", s.Name, "port", port, "pid", rec.PID, "release", releaseDir)
	return rec, done, nil
}

// startBeside starts a new process of a ReusePort service while the old
// one runs, recorded in the next PID file.
func (m *Manager) startBeside(ctx context.Context, s Spec, releaseDir string, port int) (*record, settle, error) {
	next := m.nextPIDFile(s.Name, port)
	if err := m.start(ctx, s, releaseDir, port, next); err != nil {
		return nil, nil, err
	}
	rec, err := readRecord(next)
	if err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", label(s.Name, port), err)
	}
	return rec, func(bool) error { return nil }, nil
}

// dropCandidate stops a new process left by an interrupted restart.
func (m *Manager) dropCandidate(ctx context.Context, s Spec, port int) error {
	path := m.nextPIDFile(s.Name, port)
	rec, st, err := inspect(path)
	if err != nil {
		return err
	}
	if st == stateRunning {
		m.log().Warn("stopping the new process of an interrupted restart", "service", s.Name, "port", port, "pid", rec.PID)
		if err := m.terminate(ctx, s, port, rec); err != nil {
			return err
		}
	}
	if st != stateNone {
		return m.removeRecord(path, rec)
	}
	return nil
}

// promote makes the next PID file the PID file of port.
func (m *Manager) promote(s Spec, port int) error {
	if err := os.Rename(m.nextPIDFile(s.Name, port), m.PIDFile(s.Name, port)); err != nil {
		return fmt.Errorf("record the new process of %s: %w", label(s.Name, port), err)
	}
	return nil
}

// startSocket starts one process of a socket service. A process that still
// serves after its supervisor died is replaced through a new supervisor,
// so that the sockets are held again.
func (m *Manager) startSocket(ctx context.Context, s Spec, releaseDir string, port int) error {
	what := label(s.Name, port)
	rec, st, err := inspect(m.PIDFile(s.Name, port))
	if err != nil {
		return fmt.Errorf("start %s: %w", what, err)
	}
	if st == stateRunning {
		resp, err := askSupervisor(ctx, m.pidsDir(), s.Name, &supRequest{Op: opPing})
		if err == nil && slices.Contains(resp.Children, rec.PID) {
			return fmt.Errorf("start %s: %w (pid %d from %s since %s); use restart",
				what, ErrAlreadyRunning, rec.PID, rec.ReleaseDir, rec.StartedAt.Format(time.RFC3339))
		}
		// Its supervisor died: the socket it serves is held by nobody else.
		m.log().Warn("the supervisor that started this process is gone; replacing it", "service", s.Name, "port", port, "pid", rec.PID)
		return m.replace(ctx, s, releaseDir, port)
	}
	if err := m.ensureSupervisor(ctx, s); err != nil {
		return err
	}
	if err := m.dropCandidate(ctx, s, port); err != nil {
		return fmt.Errorf("start %s: %w", what, err)
	}
	_, done, err := m.spawn(ctx, s, releaseDir, port)
	if err != nil {
		return err
	}
	if err := m.promote(s, port); err != nil {
		_ = done(false)
		return err
	}
	return done(true)
}

// replace moves port of a socket service to releaseDir: start the new
// process on the held socket, wait until it is healthy, then stop the old
// one. When the new one fails, it is stopped and the old one keeps serving.
// A ReusePort service goes the same way with a process that binds the port
// itself beside the old one.
func (m *Manager) replace(ctx context.Context, s Spec, releaseDir string, port int) error {
	began := time.Now()
	spawn := m.spawn
	if s.Socket {
		if err := m.ensureSupervisor(ctx, s); err != nil {
			return fmt.Errorf("restart %s: %w", s.Name, err)
		}
	} else {
		spawn = m.startBeside
	}
	if err := m.dropCandidate(ctx, s, port); err != nil {
		return fmt.Errorf("restart %s: %w", label(s.Name, port), err)
	}
	old, oldState, err := inspect(m.PIDFile(s.Name, port))
	if err != nil {
		return fmt.Errorf("restart %s: %w", label(s.Name, port), err)
	}
	cand, done, err := spawn(ctx, s, releaseDir, port)
	if err != nil && s.Socket && oldState == stateRunning && strings.Contains(err.Error(), "address already in use") {
		// The old process binds the port itself: the service has just been
		// switched to socket: true. This once, stop it first.
		m.log().Warn("the old process holds the port itself (socket: true is new); stopping it before the first start on a held socket",
			"service", s.Name, "port", port, "pid", old.PID)
		if err := m.stopManaged(ctx, s, port); err != nil {
			return fmt.Errorf("restart: %w", err)
		}
		oldState = stateNone
		cand, done, err = spawn(ctx, s, releaseDir, port)
	}
	if err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	if err := m.checkNew(ctx, s, port, cand, began); err != nil {
		// The old process never stopped serving; take the new one away.
		_ = done(false)
		if derr := m.dropCandidate(context.WithoutCancel(ctx), s, port); derr != nil {
			err = errors.Join(err, derr)
		}
		if oldState == stateRunning {
			return fmt.Errorf("restart %s: %w\nthe old process (pid %d from %s) keeps serving", s.Name, err, old.PID, old.ReleaseDir)
		}
		return fmt.Errorf("restart %s: %w", s.Name, err)
	}
	if err := m.promote(s, port); err != nil {
		_ = done(false)
		return err
	}
	if err := done(true); err != nil {
		if !alive(cand) {
			return fmt.Errorf("restart: %w", err)
		}
		// The supervisor is gone (it could not drop the process either).
		m.log().Warn("the supervisor did not confirm the new process; it runs, going on", "service", s.Name, "port", port, "pid", cand.PID, "error", err)
	}
	if oldState == stateRunning && old.PID != cand.PID {
		if err := m.terminate(ctx, s, port, old); err != nil {
			return fmt.Errorf("restart: stop the old process: %w", err)
		}
	}
	m.log().Info("service restarted, new process before the old one stopped", "service", s.Name, "port", port, "release", releaseDir,
		"pid", cand.PID, "restart", s.RestartKind(), "elapsed", time.Since(began).Round(time.Millisecond))
	return nil
}

// checkNew waits until the new process cand is healthy: its own answers
// count, not those of the old process on the same socket. Without a health
// check it must still run right after starting.
func (m *Manager) checkNew(ctx context.Context, s Spec, port int, cand *record, began time.Time) error {
	if s.Health != nil {
		return m.check(ctx, s, port, cand)
	}
	if !alive(cand) {
		logPath := m.LogFile(s.Name, port)
		return &HealthError{Service: s.Name, Port: port, Elapsed: time.Since(began),
			Last: fmt.Errorf("%w: pid %d right after starting", ErrExited, cand.PID), LogFile: logPath, Tail: tailLines(logPath, tailCount)}
	}
	return nil
}

// stopSocket stops one process of a socket service, and its supervisor
// once no process of the service is left.
func (m *Manager) stopSocket(ctx context.Context, s Spec, port int) error {
	err := m.dropCandidate(ctx, s, port)
	if err == nil {
		err = m.stopManaged(ctx, s, port)
	}
	if err != nil {
		return err
	}
	for _, p := range s.ports() {
		if _, st, _ := inspect(m.PIDFile(s.Name, p)); st == stateRunning {
			return nil
		}
	}
	rec, st, _ := inspect(supervisorPIDFile(m.pidsDir(), s.Name))
	if _, err := askSupervisor(ctx, m.pidsDir(), s.Name, &supRequest{Op: opExit}); err != nil && st == stateRunning {
		signal(rec, syscall.SIGTERM) // running but not answering
	}
	if st == stateRunning {
		if gone, err := waitUntil(ctx, killWait, func() bool { return !alive(rec) }); err != nil || !gone {
			return fmt.Errorf("stop the supervisor of %s (pid %d): still running after %s (%v)", s.Name, rec.PID, killWait, err)
		}
		m.log().Info("supervisor stopped; the sockets are closed", "service", s.Name)
	}
	return nil
}

// SupervisorState is what Status says about the supervisor of a socket
// service.
type SupervisorState struct {
	PID      int      `json:"pid,omitempty"`
	Running  bool     `json:"running"`
	State    string   `json:"state"`              // "running", "stopped", "dead" (its PID file names a dead process), "not answering"
	Sockets  []string `json:"sockets,omitempty"`  // listening addresses it holds
	Children []int    `json:"children,omitempty"` // live processes it started
	Log      string   `json:"log,omitempty"`
}

// supervisorStatus asks the supervisor of s what it holds.
func (m *Manager) supervisorStatus(s Spec) *SupervisorState {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out := &SupervisorState{State: "stopped", Log: m.SupervisorLog(s.Name)}
	rec, st, _ := inspect(supervisorPIDFile(m.pidsDir(), s.Name))
	if rec != nil {
		out.PID = rec.PID
	}
	resp, err := askSupervisor(ctx, m.pidsDir(), s.Name, &supRequest{Op: opPing})
	switch {
	case err == nil:
		out.Running, out.State, out.PID, out.Sockets, out.Children = true, "running", resp.PID, resp.Sockets, resp.Children
	case st == stateRunning:
		out.State = "not answering"
	case st == stateStale:
		out.State = "dead"
	}
	return out
}

// newStatus adds to p how s restarts and the new process of a restart
// under way or interrupted.
func (m *Manager) newStatus(s Spec, p *Process) {
	p.Restart = s.RestartKind()
	if rec, st, _ := inspect(m.nextPIDFile(s.Name, p.Port)); st == stateRunning {
		p.NewPID, p.NewReleaseDir = rec.PID, rec.ReleaseDir
	}
}

// socketStatus adds what only a socket service has to p.
func (m *Manager) socketStatus(s Spec, p *Process, sup *SupervisorState) {
	m.newStatus(s, p)
	p.Supervisor = sup
	if p.Port != 0 {
		p.Listeners = listenHolders(p.Port, sup.PID)
	}
	p.Orphan = p.Running && !slices.Contains(sup.Children, p.PID)
}

// errOtherAnswered is the last error of a health probe that another
// process on the same socket (the old one) answered.
var errOtherAnswered = errors.New("answered by the old process on the same socket, not by the new one")

// probeHTTPFrom is probeHTTP that counts only an answer from process group
// pgid: it keeps the connection open until it has looked up, in /proc,
// which process accepted it.
func probeHTTPFrom(ctx context.Context, url string, pid int) error {
	var local, remote *net.TCPAddr
	tr := &http.Transport{
		MaxIdleConns: 1,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err == nil {
				local, _ = c.LocalAddr().(*net.TCPAddr)
				remote, _ = c.RemoteAddr().(*net.TCPAddr)
			}
			return c, err
		},
	}
	defer tr.CloseIdleConnections()
	err := probeHTTP(ctx, &http.Client{Transport: tr}, url)
	if local == nil || remote == nil {
		return err // no connection
	}
	mine, known := acceptedBy(pid, remote, local)
	switch {
	case !known:
		if err != nil {
			return err
		}
		return fmt.Errorf("cannot tell which process answered GET %s (it closed the connection)", url)
	case !mine:
		return errOtherAnswered
	}
	return err
}
