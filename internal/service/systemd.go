package service

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

func runCommand(ctx context.Context, name string, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

func (m *Manager) runner() Runner {
	if m.Run != nil {
		return m.Run
	}
	return runCommand
}

// systemctl runs `systemctl verb unit`; its error carries systemctl's output.
func (m *Manager) systemctl(ctx context.Context, verb, unit string) error {
	began := time.Now()
	out, err := m.runner()(ctx, "systemctl", verb, unit)
	if err != nil {
		if msg := strings.TrimSpace(string(out)); msg != "" {
			return fmt.Errorf("systemctl %s %s: %w: %s", verb, unit, err, msg)
		}
		return fmt.Errorf("systemctl %s %s: %w", verb, unit, err)
	}
	m.log().Info("systemctl", "verb", verb, "unit", unit, "elapsed", time.Since(began).Round(time.Millisecond))
	return nil
}

// systemdStatus asks systemctl whether the unit of s is active
// (`systemctl is-active`, which exits non-zero for anything else) and, best
// effort, for its main PID and since when it is active.
func (m *Manager) systemdStatus(ctx context.Context, s Spec) Process {
	p := Process{Service: s.Name, Unit: s.Systemd}
	out, err := m.runner()(ctx, "systemctl", "is-active", s.Systemd)
	p.State = strings.TrimSpace(string(out))
	p.Running = err == nil && p.State == "active"
	if p.State == "" {
		if err == nil {
			err = fmt.Errorf("no output")
		}
		p.Error = fmt.Sprintf("systemctl is-active %s: %v", s.Systemd, err)
		return p
	}
	out, err = m.runner()(ctx, "systemctl", "show", "--property=MainPID,ActiveEnterTimestamp", s.Systemd)
	if err != nil {
		return p
	}
	for _, line := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch k {
		case "MainPID":
			p.PID, _ = strconv.Atoi(v)
		case "ActiveEnterTimestamp":
			if t, err := time.Parse("Mon 2006-01-02 15:04:05 MST", v); err == nil {
				p.Since = t
			}
		}
	}
	return p
}

// SocketUnit returns the socket unit that holds the sockets of a systemd
// service with Socket set: the service's unit name with .socket for
// .service (shop-web.service: shop-web.socket).
func (s Spec) SocketUnit() string {
	return strings.TrimSuffix(s.Systemd, ".service") + ".socket"
}

// checkSocketUnit fails, saying how to install it, unless the socket unit
// of s is active: without it systemctl restart would refuse connections.
func (m *Manager) checkSocketUnit(ctx context.Context, s Spec) error {
	unit := s.SocketUnit()
	out, err := m.runner()(ctx, "systemctl", "is-active", unit)
	state := strings.TrimSpace(string(out))
	if err == nil && state == "active" {
		return nil
	}
	if state == "" {
		state = fmt.Sprint(err)
	}
	return fmt.Errorf("service %s has socket: true, so its socket unit %s must be active, but systemctl is-active says %q.\n"+
		"Install it: /etc/systemd/system/%s with [Socket] ListenStream=<port> (one line per port) and, when the names differ, Service=%s;\n"+
		"then: systemctl daemon-reload && systemctl enable --now %s. %s then gets the sockets from fd 3 on (LISTEN_FDS, LISTEN_FDNAMES)",
		s.Name, unit, state, unit, s.Systemd, unit, s.Systemd)
}

// socketUnitStatus reports the socket unit of s: active or not, and where
// it listens.
func (m *Manager) socketUnitStatus(ctx context.Context, s Spec) *SupervisorState {
	unit := s.SocketUnit()
	out, err := m.runner()(ctx, "systemctl", "is-active", unit)
	st := &SupervisorState{State: "socket unit " + unit + ": " + strings.TrimSpace(string(out))}
	st.Running = err == nil && strings.TrimSpace(string(out)) == "active"
	if out, err := m.runner()(ctx, "systemctl", "show", "--property=Listen", unit); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Listen="); ok && v != "" {
				st.Sockets = append(st.Sockets, v)
			}
		}
	}
	return st
}
