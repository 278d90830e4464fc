package node_test

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/transport/local"
)

// TestBarrierActivateWaitsForGo: a Barrier activate runs up to the switch,
// says ready and waits; a go false or a closed stdin fails it with the
// host unswitched (and the release still activatable), and so does a
// SIGTERM (the deployer cancelled) before the go; a go true switches.
func TestBarrierActivateWaitsForGo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds drover")
	}
	a := apptest.New(t, apptest.Options{NoService: true})
	bin := apptest.DroverBinary(t)
	conn := &local.Conn{Binary: bin}
	c1 := a.Repo.Head()
	r1 := release.NewID(time.Unix(1000, 0), c1)
	c2 := a.Repo.Commit("two", map[string]string{"two": "2"})
	r2 := release.NewID(time.Unix(2000, 0), c2)
	req := func(op, id, commit string) *node.Request {
		return &node.Request{Op: op, App: a.Config, Env: "test", Host: "local", Roles: []string{"web", "db"}, ID: id, Commit: commit, By: "bob@ci"}
	}
	mustOK(t, conn, req(node.OpPrepare, r1, c1))
	mustOK(t, conn, req(node.OpActivate, r1, c1))
	mustOK(t, conn, req(node.OpPrepare, r2, c2))
	layout := release.Layout{Root: a.DeployTo}
	active := func() string {
		t.Helper()
		id, err := layout.ActiveID()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}

	// "": stdin closed; "TERM": the request cancelled (SIGTERM) before the go.
	for _, say := range []string{`{"go":false}` + "\n", "", "TERM"} {
		breq := req(node.OpActivate, r2, c2)
		breq.Barrier = true
		s := startSession(t, bin, breq)
		for {
			m := s.next(t)
			if _, ok := m["result"]; ok {
				t.Fatalf("answered before ready: %s", m["result"])
			}
			if string(m["ready"]) == "true" {
				break
			}
		}
		if got := active(); got != r1 {
			t.Fatalf("switched to %s before the go", got)
		}
		switch say {
		case "TERM":
			if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
		case "":
			s.stdin.Close()
		default:
			if _, err := s.stdin.Write([]byte(say)); err != nil {
				t.Fatal(err)
			}
			s.stdin.Close()
		}
		var resp node.Response
		for {
			m := s.next(t)
			if raw, ok := m["result"]; ok {
				if err := json.Unmarshal(raw, &resp); err != nil {
					t.Fatal(err)
				}
				break
			}
		}
		if resp.OK || !strings.Contains(resp.Error, "not switched") {
			t.Fatalf("no-go %q: %+v", say, resp)
		}
		if got := active(); got != r1 {
			t.Fatalf("no-go %q switched to %s", say, got)
		}
	}

	// The go: through the client, as a rollout sends it.
	readies := 0
	resp, err := node.CallBarrier(t.Context(), conn, req(node.OpActivate, r2, c2), nil, func() bool {
		readies++
		if got := active(); got != r1 {
			t.Errorf("switched to %s before the go", got)
		}
		return true
	})
	if err != nil || !resp.OK {
		t.Fatalf("activate with go: %v %+v", err, resp)
	}
	if readies != 1 || active() != r2 {
		t.Fatalf("ready called %d times, active %s; want once, %s", readies, active(), r2)
	}
	// Nothing left to switch: the answer comes without a ready.
	resp, err = node.CallBarrier(t.Context(), conn, req(node.OpActivate, r2, c2), nil, func() bool {
		t.Error("ready called for a release already active")
		return false
	})
	if err != nil || !resp.OK {
		t.Fatalf("activate again: %v %+v", err, resp)
	}
}
