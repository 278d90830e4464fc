//go:build integration

package test

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// hapStats reads HAProxy's own view of the fleet (internal/testenv/haproxytest
// runs it) through its runtime socket.

// hapInter is how often the tests' HAProxy checks each server's health
// (haproxytest: rise 2, fall 2).
const hapInter = 200 * time.Millisecond

// hapStats reads one backend's state through HAProxy's runtime socket.
type hapStats struct {
	Socket  string
	Backend string
}

// admin sends one command to the runtime API and returns its answer.
func (h hapStats) admin(command string) (string, error) {
	c, err := net.DialTimeout("unix", h.Socket, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", command); err != nil {
		return "", err
	}
	var b strings.Builder
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		b.WriteString(sc.Text() + "\n")
	}
	return b.String(), sc.Err()
}

// serverStat is one backend server as HAProxy's `show stat` reports it.
type serverStat struct {
	Name   string
	Status string // UP, DOWN, DRAIN, MAINT, "UP 1/2", "DOWN 1/2", ...
	Weight int
	Active int // scur: current sessions
	// Retries counts the connections HAProxy retried (wretr) or sent to
	// another server (wredis) after one failed: failures its retries hid
	// from clients, which a drained server never causes.
	Retries int
}

// Serving reports whether HAProxy sends it new requests: UP and not
// drained (a drained server's status reads DRAIN, its weight 0).
func (s serverStat) Serving() bool { return s.Status == "UP" && s.Weight > 0 }

// servers returns the backend's servers by name.
func (h hapStats) servers(t testing.TB) map[string]serverStat {
	t.Helper()
	out, err := h.admin("show stat")
	if err != nil {
		t.Fatalf("haproxy show stat: %v", err)
	}
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
	res := map[string]serverStat{}
	for _, row := range rows[1:] {
		if len(row) < len(rows[0])-1 || row[col["pxname"]] != h.Backend {
			continue
		}
		name := row[col["svname"]]
		if name == "BACKEND" || name == "FRONTEND" {
			continue
		}
		w, _ := strconv.Atoi(row[col["weight"]])
		cur, _ := strconv.Atoi(row[col["scur"]])
		retr, _ := strconv.Atoi(row[col["wretr"]])
		redis, _ := strconv.Atoi(row[col["wredis"]])
		res[name] = serverStat{Name: name, Status: row[col["status"]], Weight: w, Active: cur, Retries: retr + redis}
	}
	return res
}

// waitServers waits until every server satisfies cond.
func (h hapStats) waitServers(t testing.TB, within time.Duration, what string, cond func(serverStat) bool) {
	t.Helper()
	var last map[string]serverStat
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		last = h.servers(t)
		ok := len(last) > 0
		for _, s := range last {
			ok = ok && cond(s)
		}
		if ok {
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("haproxy: timed out after %s waiting for %s; servers %v", within, what, last)
		case <-tick.C:
		}
	}
}

// retries sums Retries over the backend's servers.
func (h hapStats) retries(t testing.TB) int {
	t.Helper()
	n := 0
	for _, s := range h.servers(t) {
		n += s.Retries
	}
	return n
}
