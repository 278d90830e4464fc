package haproxytest

import (
	"encoding/csv"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Stat is one backend server as `show stat` reports it.
type Stat struct {
	Name   string
	Status string // UP, DOWN, DRAIN, MAINT, "UP 1/2", ...
	Weight int
	Active int // scur: current sessions
	// Retries counts the connections HAProxy retried (wretr) or sent to
	// another server (wredis) after one failed: failures its retries hid
	// from clients, which a drained server never causes.
	Retries int
}

// Serving reports whether HAProxy sends it new requests: UP and not
// drained.
func (s Stat) Serving() bool { return s.Status == "UP" && s.Weight > 0 }

// Stats returns the backend's servers by name from `show stat`.
func (h *HAProxy) Stats(t testing.TB) map[string]Stat {
	t.Helper()
	out := h.Command(t, "show stat")
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(out, "# ")))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil || len(rows) == 0 {
		t.Fatalf("haproxy show stat: %v\n%s", err, out)
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[name] = i
	}
	res := map[string]Stat{}
	for _, row := range rows[1:] {
		if len(row) < len(rows[0])-1 || row[col["pxname"]] != h.Backend {
			continue
		}
		name := row[col["svname"]]
		if name == "BACKEND" || name == "FRONTEND" {
			continue
		}
		num := func(c string) int { n, _ := strconv.Atoi(row[col[c]]); return n }
		res[name] = Stat{Name: name, Status: row[col["status"]], Weight: num("weight"), Active: num("scur"), Retries: num("wretr") + num("wredis")}
	}
	return res
}

// Retries sums Stat.Retries over the backend's servers.
func (h *HAProxy) Retries(t testing.TB) int {
	t.Helper()
	n := 0
	for _, s := range h.Stats(t) {
		n += s.Retries
	}
	return n
}

// State is one backend server as `show servers state` reports it: what
// an operator (or drover) set on it through the runtime API.
type State struct {
	Name string
	// Admin is srv_admin_state: bits 0x01, 0x02, 0x04 are maintenance
	// (forced, inherited, from DNS), 0x08 and 0x10 drain (forced,
	// inherited), 0x20 maintenance from resolution.
	Admin int
	// Op is srv_op_state: 0 stopped, 1 starting, 2 running, 3 stopping.
	Op     int
	Weight int // srv_uweight: the weight set by the runtime API
}

// Drained reports whether the server was put in drain.
func (s State) Drained() bool { return s.Admin&0x18 != 0 }

// Maint reports whether the server was put in maintenance.
func (s State) Maint() bool { return s.Admin&0x27 != 0 }

// Out reports whether it was taken out of the load balancer by hand or by
// a tool (drain, maintenance or weight 0), whatever its health.
func (s State) Out() bool { return s.Drained() || s.Maint() || s.Weight == 0 }

func (s State) String() string {
	return fmt.Sprintf("%s(admin %#x op %d weight %d)", s.Name, s.Admin, s.Op, s.Weight)
}

// States returns the backend's servers by name from `show servers state
// BACKEND`.
func (h *HAProxy) States(t testing.TB) map[string]State {
	t.Helper()
	out := h.Command(t, "show servers state "+h.Backend)
	var cols []string
	res := map[string]State{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0 || f[0] == "1": // empty or the format version
		case f[0] == "#":
			cols = f[1:]
		case cols != nil && len(f) >= len(cols):
			v := map[string]string{}
			for i, c := range cols {
				v[c] = f[i]
			}
			num := func(c string) int { n, _ := strconv.Atoi(v[c]); return n }
			res[v["srv_name"]] = State{Name: v["srv_name"], Admin: num("srv_admin_state"), Op: num("srv_op_state"), Weight: num("srv_uweight")}
		}
	}
	if len(res) == 0 {
		t.Fatalf("haproxy show servers state %s: no server in the answer:\n%s", h.Backend, out)
	}
	return res
}

// WaitServers waits until every server of the backend satisfies cond
// (`show stat`), failing the test with what and the last stats after
// within.
func (h *HAProxy) WaitServers(t testing.TB, within time.Duration, what string, cond func(Stat) bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		last := h.Stats(t)
		ok := len(last) > 0
		for _, s := range last {
			ok = ok && cond(s)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy: after %s still not %s: %+v", within, what, last)
		}
		<-tick.C
	}
}
