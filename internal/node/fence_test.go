package node_test

import (
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

// TestEveryMutatingRequestIsFenced: with the deploy lock held by someone
// else, every request that changes the host is refused naming the holder,
// whether it carries no token or a stale one; the holder's own token
// passes; requests that only read still answer; and a request without a
// token takes the lock for its own length only.
func TestEveryMutatingRequestIsFenced(t *testing.T) {
	if testing.Short() {
		t.Skip("builds drover")
	}
	a := apptest.New(t, apptest.Options{NoService: true})
	conn := &local.Conn{Binary: apptest.DroverBinary(t)}
	c1 := a.Repo.Head()
	r1 := release.NewID(time.Unix(1000, 0), c1)
	c2 := a.Repo.Commit("two", map[string]string{"two": "2"})
	r2 := release.NewID(time.Unix(2000, 0), c2)
	req := func(op string, token int64) *node.Request {
		return &node.Request{Op: op, App: a.Config, Env: "test", Host: "local", Roles: []string{"web", "db"}, ID: r2, Commit: c2, Token: token,
			Stage: "before_activate", Command: "touch ran", Action: "restart", To: r1, By: "bob@ci"}
	}
	for _, r := range []*node.Request{req(node.OpPrepare, 0), req(node.OpActivate, 0)} {
		r.ID, r.Commit = r1, c1
		mustOK(t, conn, r)
	}
	lk := &lock.File{Path: filepath.Join(a.DeployTo, ".drover", "lock")}
	if h, _ := lk.Read(); h != nil {
		t.Fatalf("a request without a token left the lock held: %+v", h)
	}
	alice, err := lk.Acquire(lock.Holder{Owner: "alice@laptop", PID: 4242, Command: "drover deploy test", Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	mutating := []string{node.OpPrepare, node.OpHooks, node.OpActivate, node.OpRollback, node.OpCleanup, node.OpExec, node.OpService}
	for _, op := range mutating {
		for _, token := range []int64{0, alice.Token + 100} {
			resp, err := call(t, conn, req(op, token))
			if err != nil {
				t.Fatalf("%s: %v", op, err)
			}
			want := "alice@laptop"
			if token != 0 {
				want = "lock lost"
			}
			if resp.OK || !strings.Contains(resp.Error, want) {
				t.Errorf("%s with token %d under alice's lock: %+v", op, token, resp)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(a.DeployTo, "releases", r2)); err == nil {
		t.Error("prepare ran under someone else's lock")
	}
	if _, err := os.Stat(filepath.Join(a.DeployTo, "current", "ran")); err == nil {
		t.Error("exec ran under someone else's lock")
	}
	for _, op := range []string{node.OpReleases, node.OpRollbackTarget, node.OpLockStatus} {
		mustOK(t, conn, req(op, 0))
	}
	// The holder's own token passes.
	mustOK(t, conn, req(node.OpExec, alice.Token))
	if _, err := os.Stat(filepath.Join(a.DeployTo, "current", "ran")); err != nil {
		t.Errorf("exec with the holder's token did not run: %v", err)
	}
	if h, _ := lk.Read(); h == nil || h.Token != alice.Token {
		t.Errorf("alice's lock changed hands: %+v", h)
	}
}
