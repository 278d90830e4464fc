package node_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/transport/local"
)

func call(t *testing.T, conn node.Conn, req *node.Request) (*node.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return node.Call(ctx, conn, req, nil)
}

func mustOK(t *testing.T, conn node.Conn, req *node.Request) *node.Response {
	t.Helper()
	resp, err := call(t, conn, req)
	if err != nil {
		t.Fatalf("%s: %v", req.Op, err)
	}
	if !resp.OK {
		t.Fatalf("%s: %s (step %s)\n%s", req.Op, resp.Error, resp.Step, strings.Join(resp.Tail, "\n"))
	}
	return resp
}

func body(t *testing.T, port int) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		return "error: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// checkInvariants asserts DESIGN.md's node invariants: current points at a
// complete release directory (or nowhere), and shared/ still holds what the
// test put there.
func checkInvariants(t *testing.T, a *apptest.App) {
	t.Helper()
	target, err := os.Readlink(filepath.Join(a.DeployTo, "current"))
	if err == nil {
		dir := filepath.Join(a.DeployTo, target)
		for _, f := range []string{"README", "drover.yml", "bin/hello"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				t.Errorf("current → %s is incomplete: %v", target, err)
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(a.DeployTo, "shared", "public", "uploads", "keep.txt")); err != nil || string(b) != "user data" {
		t.Errorf("shared/ upload lost: %q %v", b, err)
	}
}

// TestCrashAtEveryStep kills the engine with SIGKILL at each named point of
// prepare and activate, then checks the invariants, resumes the release,
// and deploys a new one.
func TestCrashAtEveryStep(t *testing.T) {
	if testing.Short() {
		t.Skip("builds drover and starts real services")
	}
	bin := debugBinary(t)
	points := []struct{ op, at string }{
		{node.OpPrepare, "before:fetch"}, {node.OpPrepare, "after:fetch"},
		{node.OpPrepare, "before:checkout"}, {node.OpPrepare, "after:checkout"},
		{node.OpPrepare, "after:shared"},
		{node.OpPrepare, "before:hook:prepare"}, {node.OpPrepare, "after:hook:prepare"},
		{node.OpActivate, "before:switch"}, {node.OpActivate, "after:switch"},
		{node.OpActivate, "before:restart"}, {node.OpActivate, "after:restart"},
	}
	for _, p := range points {
		t.Run(p.at, func(t *testing.T) {
			var root string
			noLeftovers(t, &root)
			a := apptest.New(t, apptest.Options{})
			root = a.DeployTo
			conn := &local.Conn{Binary: bin}
			// The deploy lock, held as a rollout holds it, outlives the
			// engine's crash; every request carries its fencing token.
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			held, err := node.Hold(ctx, conn, &node.Request{App: a.Config, Env: "test", Host: "local", Holder: &lock.Holder{Owner: "crash@test"}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = held.Release() })
			req := func(op, id, commit string) *node.Request {
				return &node.Request{Op: op, App: a.Config, Env: "test", Host: "local", Roles: []string{"web", "db"}, ID: id, Commit: commit, Token: held.Holder.Token}
			}
			uploads := filepath.Join(a.DeployTo, "shared", "public", "uploads")
			os.MkdirAll(uploads, 0o755)
			os.WriteFile(filepath.Join(uploads, "keep.txt"), []byte("user data"), 0o644)

			c1 := a.Repo.Head()
			r1 := release.NewID(time.Unix(1000, 0), c1)
			mustOK(t, conn, req(node.OpPrepare, r1, c1))
			mustOK(t, conn, req(node.OpActivate, r1, c1))

			c2 := a.Repo.Commit("two", map[string]string{"two": "2"})
			r2 := release.NewID(time.Unix(2000, 0), c2)
			if p.op == node.OpActivate {
				mustOK(t, conn, req(node.OpPrepare, r2, c2))
			}
			crash := req(p.op, r2, c2)
			crash.CrashAt = p.at
			resp, err := call(t, conn, crash)
			if err == nil {
				t.Fatalf("the engine did not die at %s: %+v", p.at, resp)
			}
			checkInvariants(t, a)
			if got := body(t, a.Ports[0]); !strings.Contains(got, r1) && !strings.Contains(got, r2) {
				t.Errorf("after the crash the service answers %q", got)
			}

			// Resume: the same verbs again finish the release.
			mustOK(t, conn, req(node.OpPrepare, r2, c2))
			mustOK(t, conn, req(node.OpActivate, r2, c2))
			checkInvariants(t, a)
			if got := body(t, a.Ports[0]); !strings.Contains(got, r2) {
				t.Fatalf("after resume the service answers %q, want %s", got, r2)
			}

			// And a new release deploys cleanly on top.
			c3 := a.Repo.Commit("three", map[string]string{"three": "3"})
			r3 := release.NewID(time.Unix(3000, 0), c3)
			mustOK(t, conn, req(node.OpPrepare, r3, c3))
			mustOK(t, conn, req(node.OpActivate, r3, c3))
			if got := body(t, a.Ports[0]); !strings.Contains(got, r3) {
				t.Fatalf("new deploy after crash: service answers %q", got)
			}
			resp = mustOK(t, conn, req(node.OpCleanup, "", ""))
			_ = resp
			checkInvariants(t, a)
		})
	}
}
