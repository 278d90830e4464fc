// Package haproxy drains and enables the servers of one HAProxy backend
// through HAProxy's runtime API (the "stats socket" with level admin), on a
// unix socket or on TCP (tcp:HOST:PORT). One command per connection.
//
// Members combines two commands: `show stat BACKEND 6 -1` gives each server's status
// string (shown as Member.Detail) and its current sessions (scur, which is
// Member.Active), and `show servers state BACKEND` gives the operational and
// administrative states that the status string hides (a drained server that
// fails its check shows only "DOWN" in show stat):
//
//   - Enabled is false when any admin flag is set: drained (DRAIN) or in
//     maintenance (MAINT), by the runtime API, the config or a tracked server.
//   - Healthy is HAProxy's check verdict: the server is running (UP, "UP 1/2"
//     still going down, "no check", or starting under slowstart). A server
//     going up ("DOWN 1/2") is not healthy yet; NOLB (stopping, weight 0 on
//     purpose) is not healthy.
//   - Draining is !Enabled with sessions still open (scur > 0).
//
// Drain is `set server B/S state drain`; Enable is `set server B/S state
// ready` (which also leaves maintenance).
package haproxy

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/drover/drover/internal/lb"
)

// DefaultTimeout bounds one runtime API command unless Balancer.Timeout
// says otherwise.
const DefaultTimeout = 5 * time.Second

// Balancer is one backend of one HAProxy, reached through its runtime API.
type Balancer struct {
	// Timeout bounds each runtime API command (dial, write, read), so a
	// HAProxy that accepts and never answers fails the call; New sets
	// DefaultTimeout.
	Timeout time.Duration

	socket  string // as configured: a path, unix:PATH or tcp:HOST:PORT
	backend string
}

// New returns a Balancer for backend, reached on socket: a unix socket path
// (optionally unix:PATH) or tcp:HOST:PORT. It does not connect.
func New(socket, backend string) *Balancer {
	return &Balancer{Timeout: DefaultTimeout, socket: socket, backend: backend}
}

// Server operational states (srv_op_state of `show servers state`).
const (
	opStopped  = 0
	opStarting = 1
	opRunning  = 2
	opStopping = 3
)

// Members returns every server of the backend as HAProxy sees it now.
func (b *Balancer) Members(ctx context.Context) ([]lb.Member, error) {
	if !nameRE.MatchString(b.backend) {
		return nil, fmt.Errorf("haproxy %s: %q is not a HAProxy backend name (letters, digits, - _ . :); check load_balancer.backend in drover.yml", b.socket, b.backend)
	}
	// The backend's own row (type 2) and its servers (type 4).
	cmd := "show stat " + b.backend + " 6 -1"
	stat, err := b.command(ctx, cmd)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(stat, "No such proxy") {
		return nil, b.noBackend(cmd)
	}
	rows, err := parseCSV(stat)
	if err != nil {
		return nil, fmt.Errorf("haproxy %s: %q: %w", b.socket, cmd, err)
	}
	var members []lb.Member
	for _, r := range rows {
		if r["pxname"] != b.backend || r["svname"] == "BACKEND" || r["svname"] == "FRONTEND" {
			continue
		}
		scur, _ := strconv.Atoi(r["scur"])
		members = append(members, lb.Member{Name: r["svname"], Detail: r["status"], Active: scur})
	}
	cmd = "show servers state " + b.backend
	state, err := b.command(ctx, cmd)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(state, "Can't find backend") { // a frontend of that name
		return nil, b.noBackend(cmd)
	}
	states, err := parseServersState(state)
	if err != nil {
		return nil, fmt.Errorf("haproxy %s: %q: %w", b.socket, cmd, err)
	}
	for i := range members {
		m := &members[i]
		s, ok := states[m.Name]
		if !ok {
			// The server appeared between the two commands: judge it
			// by its status string alone.
			s = stateFromStatus(m.Detail)
		}
		m.Enabled = s.admin == 0
		m.Healthy = s.op == opRunning || s.op == opStarting
		m.Draining = !m.Enabled && m.Active > 0
		if !m.Enabled && !strings.HasPrefix(m.Detail, "DRAIN") && !strings.HasPrefix(m.Detail, "MAINT") {
			m.Detail += " (drained)"
		}
	}
	return members, nil
}

// Drain sets the server's state to drain: no new requests, sessions finish.
func (b *Balancer) Drain(ctx context.Context, member string) error {
	return b.setState(ctx, member, "drain")
}

// Enable sets the server's state to ready; it serves once its check passes.
func (b *Balancer) Enable(ctx context.Context, member string) error {
	return b.setState(ctx, member, "ready")
}

// nameRE is what HAProxy allows in proxy and server names. Anything else
// could not name a server, and a blank or ';' would smuggle another
// command into the runtime API.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]+$`)

func (b *Balancer) setState(ctx context.Context, member, state string) error {
	if !nameRE.MatchString(b.backend) {
		return fmt.Errorf("haproxy %s: %q is not a HAProxy backend name (letters, digits, - _ . :); check load_balancer.backend in drover.yml", b.socket, b.backend)
	}
	if !nameRE.MatchString(member) {
		return fmt.Errorf("haproxy %s: backend %s: %q is not a HAProxy server name (letters, digits, - _ . :): %w", b.socket, b.backend, member, lb.ErrUnknownMember)
	}
	cmd := fmt.Sprintf("set server %s/%s state %s", b.backend, member, state)
	out, err := b.command(ctx, cmd)
	if err != nil {
		return err
	}
	msg := strings.TrimSpace(out)
	switch {
	case msg == "":
		return nil
	case strings.HasPrefix(msg, "No such server"):
		return fmt.Errorf("haproxy %s: backend %s: server %q: %w (HAProxy said %q to %q)", b.socket, b.backend, member, lb.ErrUnknownMember, msg, cmd)
	case strings.HasPrefix(msg, "No such backend"):
		return b.noBackend(cmd)
	default:
		return fmt.Errorf("haproxy %s: %q: %s", b.socket, cmd, msg)
	}
}

func (b *Balancer) noBackend(cmd string) error {
	return fmt.Errorf("haproxy %s: %q: HAProxy has no backend %q; check load_balancer.backend in drover.yml", b.socket, cmd, b.backend)
}

// command sends one command on a new connection and returns the answer.
func (b *Balancer) command(ctx context.Context, cmd string) (string, error) {
	if b.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.Timeout)
		defer cancel()
	}
	network, addr := "unix", strings.TrimPrefix(b.socket, "unix:")
	if a, ok := strings.CutPrefix(b.socket, "tcp:"); ok {
		network, addr = "tcp", a
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return "", fmt.Errorf("haproxy %s: %q: %w (is HAProxy running with `stats socket ... level admin` there?)", b.socket, cmd, err)
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", fmt.Errorf("haproxy %s: %q: %w", b.socket, cmd, err)
	}
	out, err := io.ReadAll(c)
	if err != nil {
		return "", fmt.Errorf("haproxy %s: %q: %w", b.socket, cmd, err)
	}
	s := string(out)
	if strings.HasPrefix(s, "Unknown command") || strings.HasPrefix(s, "Permission denied") {
		first, _, _ := strings.Cut(s, "\n")
		return "", fmt.Errorf("haproxy %s: %q: %s (the socket needs `level admin`)", b.socket, cmd, first)
	}
	return s, nil
}

// parseCSV reads `show stat` output into rows keyed by column name.
func parseCSV(s string) ([]map[string]string, error) {
	s = strings.TrimPrefix(s, "# ")
	r := csv.NewReader(strings.NewReader(s))
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 || len(recs[0]) < 2 || recs[0][0] != "pxname" {
		return nil, errors.New("unexpected answer: no pxname,svname header")
	}
	head := recs[0]
	var rows []map[string]string
	for _, rec := range recs[1:] {
		row := map[string]string{}
		for i, v := range rec {
			if i < len(head) {
				row[head[i]] = v
			}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

type serverState struct {
	op, admin int
}

// parseServersState reads `show servers state BACKEND` (format version 1:
// a version line, a "# be_id be_name ..." header, one line per server).
func parseServersState(s string) (map[string]serverState, error) {
	var head []string
	out := map[string]serverState{}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || head == nil && !strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "#"):
			head = strings.Fields(strings.TrimPrefix(line, "#"))
			continue
		}
		f := strings.Fields(line)
		row := map[string]string{}
		for i, v := range f {
			if i < len(head) {
				row[head[i]] = v
			}
		}
		op, err1 := strconv.Atoi(row["srv_op_state"])
		admin, err2 := strconv.Atoi(row["srv_admin_state"])
		if row["srv_name"] == "" || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("unexpected line %q", line)
		}
		out[row["srv_name"]] = serverState{op: op, admin: admin}
	}
	if head == nil {
		return nil, errors.New("unexpected answer: no header line")
	}
	return out, nil
}

// stateFromStatus guesses the states from a show stat status string.
func stateFromStatus(status string) serverState {
	word, _, _ := strings.Cut(status, " ")
	switch word {
	case "UP", "no":
		return serverState{op: opRunning}
	case "NOLB":
		return serverState{op: opStopping}
	case "DRAIN":
		return serverState{op: opRunning, admin: 0x08}
	case "MAINT":
		return serverState{op: opStopped, admin: 0x01}
	}
	return serverState{op: opStopped}
}
