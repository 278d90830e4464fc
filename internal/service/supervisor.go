package service

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	ossignal "os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A supervisor is a small long-lived process, one per socket service
// (`socket: true`), that holds the service's listening sockets across
// releases and starts the service's processes on them in the protocol of
// systemd socket activation (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES). It
// runs in its own session, so it outlives the SSH session or agent that
// started it, and answers JSON requests on a unix socket next to the PID
// files: <shared>/pids/<service>.sock. Its own PID file is
// <service>.supervisor.pid; a lock on <service>.supervisor.lock keeps it
// alone. Health checks and stopping old processes are done by the drover
// that asks for the restart (Manager), so a supervisor never needs to be
// upgraded with drover: it only binds and spawns.

// SupervisorConfig says which service a supervisor serves.
type SupervisorConfig struct {
	PIDsDir string       // <deploy_to>/shared/pids
	Service string       // service name
	Logger  *slog.Logger // nil logs to stderr
}

// Supervisor control operations.
const (
	opPing  = "ping"
	opSpawn = "spawn"
	opExit  = "exit"
	opKeep  = "keep" // second message on a held spawn connection: the new process stays
)

// supRequest is one request to a supervisor.
type supRequest struct {
	Op      string   `json:"op"`
	Port    int      `json:"port,omitempty"`
	Bind    string   `json:"bind,omitempty"`    // address part of the listening socket; empty: every address
	Command string   `json:"command,omitempty"` // run as `sh -c 'LISTEN_PID=$$ ... exec COMMAND'`
	Dir     string   `json:"dir,omitempty"`
	Env     []string `json:"env,omitempty"`
	Log     string   `json:"log,omitempty"`
	FDName  string   `json:"fd_name,omitempty"`
	Hold    bool     `json:"hold,omitempty"` // spawn: the asker keeps the connection and sends keep; if it goes away first, the process is stopped
}

// supResponse is a supervisor's answer.
type supResponse struct {
	Error      string   `json:"error,omitempty"`
	PID        int      `json:"pid,omitempty"`         // the supervisor (ping) or the spawned process (spawn)
	StartTicks uint64   `json:"start_ticks,omitempty"` // of the spawned process
	Sockets    []string `json:"sockets,omitempty"`     // listening addresses held
	Children   []int    `json:"children,omitempty"`    // live processes it started
}

// Supervise runs a supervisor until ctx ends, it gets SIGTERM or SIGINT, or
// a drover asks it to exit; then it closes its sockets and removes its
// control socket and PID file. Processes it started keep running.
func Supervise(ctx context.Context, c SupervisorConfig) error {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	log = log.With("service", c.Service)
	if c.PIDsDir == "" || c.Service == "" || strings.ContainsAny(c.Service, "/\x00") {
		return fmt.Errorf("supervise: need a pids dir and a service name (got %q, %q)", c.PIDsDir, c.Service)
	}
	if err := os.MkdirAll(c.PIDsDir, 0o755); err != nil {
		return fmt.Errorf("supervise %s: %w", c.Service, err)
	}
	lockPath := filepath.Join(c.PIDsDir, c.Service+".supervisor.lock")
	lockf, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("supervise %s: %w", c.Service, err)
	}
	defer lockf.Close()
	if err := syscall.Flock(int(lockf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("supervise %s: another supervisor holds %s: %w", c.Service, lockPath, err)
	}
	ossignal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	ctx, stop := ossignal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	sockPath := supervisorSocket(c.PIDsDir, c.Service)
	_ = os.Remove(sockPath) // left by a supervisor that died; we hold the lock
	if len(sockPath) > maxSocketPath {
		return fmt.Errorf("supervise %s: control socket path %s is %d bytes, more than a unix socket takes (%d): use a shorter deploy_to", c.Service, sockPath, len(sockPath), maxSocketPath)
	}
	// Whoever can connect can have processes started as this user: only
	// this user, whatever the umask, from the moment the socket exists.
	umask := syscall.Umask(0o077)
	ctl, err := net.Listen("unix", sockPath)
	syscall.Umask(umask)
	if err != nil {
		return fmt.Errorf("supervise %s: control socket: %w", c.Service, err)
	}
	defer os.Remove(sockPath)
	defer ctl.Close()
	if err := os.Chmod(sockPath, 0o600); err != nil {
		return fmt.Errorf("supervise %s: control socket: %w", c.Service, err)
	}
	pidPath := supervisorPIDFile(c.PIDsDir, c.Service)
	st, err := readStat(os.Getpid())
	if err != nil {
		return fmt.Errorf("supervise %s: %w", c.Service, err)
	}
	self := &record{Schema: recordSchema, PID: os.Getpid(), StartTicks: st.startTicks, BootID: bootID(),
		Service: c.Service, Command: "drover node supervise", StartedAt: time.Now().UTC()}
	if err := writeRecord(pidPath, self); err != nil {
		return fmt.Errorf("supervise %s: PID file: %w", c.Service, err)
	}
	defer func() {
		if cur, err := readRecord(pidPath); err == nil && cur.PID == self.PID {
			_ = os.Remove(pidPath)
		}
	}()

	sv := &supervisor{log: log, sockets: map[int]*os.File{}, addrs: map[int]string{}, children: map[int]bool{}, conns: map[net.Conn]bool{}, exit: make(chan struct{})}
	defer sv.closeSockets()
	log.Info("supervisor started", "pid", self.PID, "control", sockPath)
	go func() {
		select {
		case <-ctx.Done():
		case <-sv.exit:
		}
		ctl.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ctl.Accept()
		if err != nil {
			if ctx.Err() != nil || sv.exiting() {
				log.Info("supervisor exiting; processes it started keep running", "children", sv.childList())
				sv.closeConns() // a restart under way loses its new process
				return nil
			}
			return fmt.Errorf("supervise %s: accept: %w", c.Service, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sv.serve(conn)
		}()
	}
}

type supervisor struct {
	log      *slog.Logger
	mu       sync.Mutex
	sockets  map[int]*os.File  // port -> listening socket
	addrs    map[int]string    // port -> its address
	children map[int]bool      // live children
	conns    map[net.Conn]bool // open control connections
	exit     chan struct{}
	once     sync.Once
}

func (sv *supervisor) exiting() bool {
	select {
	case <-sv.exit:
		return true
	default:
		return false
	}
}

func (sv *supervisor) closeSockets() {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	for port, f := range sv.sockets {
		f.Close()
		delete(sv.sockets, port)
	}
}

func (sv *supervisor) closeConns() {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	for c := range sv.conns {
		c.Close()
	}
}

func (sv *supervisor) childList() []int {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	var out []int
	for pid := range sv.children {
		out = append(out, pid)
	}
	slices.Sort(out)
	return out
}

func (sv *supervisor) serve(conn net.Conn) {
	sv.mu.Lock()
	sv.conns[conn] = true
	sv.mu.Unlock()
	defer func() {
		sv.mu.Lock()
		delete(sv.conns, conn)
		sv.mu.Unlock()
		conn.Close()
	}()
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	var req supRequest
	resp := &supResponse{}
	dec := json.NewDecoder(bufio.NewReader(conn))
	if err := dec.Decode(&req); err != nil {
		resp.Error = "bad request: " + err.Error()
	} else {
		resp = sv.handle(&req)
	}
	err := json.NewEncoder(conn).Encode(resp)
	if req.Op == opExit {
		sv.once.Do(func() { close(sv.exit) })
		return
	}
	if err != nil && resp.PID != 0 && req.Op == opSpawn {
		sv.drop(resp.PID, "its drover is gone before it heard of it")
		return
	}
	if req.Op != opSpawn || !req.Hold || resp.Error != "" {
		return
	}
	// The drover that asked keeps this connection until the new process is
	// healthy and recorded ("keep"). If it dies first (kill -9 of the
	// deployer mid-restart), nobody would ever stop the new process, so the
	// supervisor does: the old one never stopped serving.
	_ = conn.SetDeadline(time.Time{})
	var next supRequest
	if err := dec.Decode(&next); err != nil || next.Op != opKeep {
		sv.drop(resp.PID, "the restart that started it did not finish")
		return
	}
	_ = json.NewEncoder(conn).Encode(&supResponse{PID: resp.PID})
}

// dropWait bounds how long drop waits for a dropped process to exit on
// SIGTERM before it sends SIGKILL.
const dropWait = 30 * time.Second

// drop stops a process it started whose restart did not finish: SIGTERM to
// its group, SIGKILL after dropWait.
func (sv *supervisor) drop(pid int, why string) {
	sv.log.Warn("stopping a new process: "+why, "pid", pid)
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	deadline := time.Now().Add(dropWait)
	for time.Now().Before(deadline) {
		sv.mu.Lock()
		live := sv.children[pid]
		sv.mu.Unlock()
		if !live {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
}

func (sv *supervisor) handle(req *supRequest) *supResponse {
	switch req.Op {
	case opPing:
		sv.mu.Lock()
		var socks []string
		for _, port := range slices.Sorted(maps.Keys(sv.addrs)) {
			socks = append(socks, sv.addrs[port])
		}
		sv.mu.Unlock()
		return &supResponse{PID: os.Getpid(), Sockets: socks, Children: sv.childList()}
	case opSpawn:
		r, err := sv.spawn(req)
		if err != nil {
			return &supResponse{Error: err.Error()}
		}
		return r
	case opExit: // serve exits once the answer is out
		return &supResponse{PID: os.Getpid()}
	}
	return &supResponse{Error: fmt.Sprintf("unknown op %q", req.Op)}
}

// socket returns the listening socket of port, binding it on first use.
// SO_REUSEPORT lets a supervisor started after one that died bind the
// port while the processes of the dead one still serve it; see Manager.
func (sv *supervisor) socket(port int, bind string) (*os.File, error) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if f := sv.sockets[port]; f != nil {
		return f, nil
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, soReusePort, 1)
		})
		return errors.Join(err, serr)
	}}
	ln, err := lc.Listen(context.Background(), "tcp", net.JoinHostPort(bind, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("listen on port %d: %w", port, err)
	}
	defer ln.Close() // the dup below keeps the socket
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return nil, fmt.Errorf("listen on port %d: %w", port, err)
	}
	sv.sockets[port], sv.addrs[port] = f, ln.Addr().String()
	sv.log.Info("listening", "port", port, "addr", ln.Addr().String())
	return f, nil
}

// soReusePort is SO_REUSEPORT on Linux (absent from package syscall).
const soReusePort = 0xf

// spawn starts one process of the service with the socket of req.Port as
// file descriptor 3.
func (sv *supervisor) spawn(req *supRequest) (*supResponse, error) {
	if req.Port <= 0 || strings.TrimSpace(req.Command) == "" || req.Dir == "" || req.Log == "" {
		return nil, errors.New("spawn needs port, command, dir and log")
	}
	sock, err := sv.socket(req.Port, req.Bind)
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(req.Log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer logf.Close()
	env := slices.DeleteFunc(slices.Clone(req.Env), func(kv string) bool {
		return strings.HasPrefix(kv, "LISTEN_") // only ours
	})
	env = append(env, "LISTEN_FDS=1", "LISTEN_FDNAMES="+req.FDName)
	// LISTEN_PID must be the app's own pid: sh sets it to its pid and then
	// execs the app, which keeps that pid.
	command := strings.TrimPrefix(strings.TrimSpace(req.Command), "exec ")
	cmd := exec.Command("/bin/sh", "-c", "LISTEN_PID=$$; export LISTEN_PID; exec "+command)
	cmd.Dir, cmd.Env = req.Dir, env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{sock}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	sv.mu.Lock() // no reaping between Start and readStat
	defer sv.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	pid := cmd.Process.Pid
	st, err := readStat(pid)
	if err != nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		go func() { _ = cmd.Wait() }()
		return nil, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	sv.children[pid] = true
	go func() {
		err := cmd.Wait()
		sv.mu.Lock()
		delete(sv.children, pid)
		sv.mu.Unlock()
		sv.log.Info("process exited", "pid", pid, "port", req.Port, "status", err)
	}()
	sv.log.Info("process started", "pid", pid, "port", req.Port, "dir", req.Dir)
	return &supResponse{PID: pid, StartTicks: st.startTicks}, nil
}

// maxSocketPath is the longest path a unix socket address holds on Linux
// (sun_path is 108 bytes with its terminating NUL).
const maxSocketPath = 107

func supervisorSocket(pidsDir, service string) string {
	return filepath.Join(pidsDir, service+".sock")
}

func supervisorPIDFile(pidsDir, service string) string {
	return filepath.Join(pidsDir, service+".supervisor.pid")
}

// askSupervisor sends one request to the supervisor of service and returns
// its answer; an error means no supervisor answered.
func askSupervisor(ctx context.Context, pidsDir, service string, req *supRequest) (*supResponse, error) {
	resp, conn, err := dialSupervisor(ctx, pidsDir, service, req)
	if conn != nil {
		conn.Close()
	}
	return resp, err
}

// dialSupervisor sends req and returns the answer with the connection, open
// for a held spawn (the caller closes it).
func dialSupervisor(ctx context.Context, pidsDir, service string, req *supRequest) (*supResponse, net.Conn, error) {
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "unix", supervisorSocket(pidsDir, service))
	if err != nil {
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		conn.Close()
		return nil, nil, err
	}
	var resp supResponse
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("supervisor of %s: %w", service, err)
	}
	_ = conn.SetDeadline(time.Time{})
	if resp.Error != "" {
		conn.Close()
		return &resp, nil, fmt.Errorf("supervisor of %s: %s", service, resp.Error)
	}
	return &resp, conn, nil
}

// keepSpawned tells the supervisor on a held spawn connection that the new
// process stays, and closes the connection.
func keepSpawned(conn net.Conn) error {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := json.NewEncoder(conn).Encode(&supRequest{Op: opKeep}); err != nil {
		return err
	}
	var resp supResponse
	return json.NewDecoder(conn).Decode(&resp)
}
