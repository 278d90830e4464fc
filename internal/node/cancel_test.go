package node_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/transport/local"
)

// TestCancelledActivateServesPrevious cancels an activate request while the
// new release's health check waits, the way a deployer's Ctrl-C or a lost
// session ends `drover node serve` (SIGTERM): the host switches back to the
// previous release, restarts it, and answers with what it serves.
func TestCancelledActivateServesPrevious(t *testing.T) {
	if testing.Short() {
		t.Skip("builds drover and starts real services")
	}
	conn := &local.Conn{Binary: apptest.DroverBinary(t)}
	a := apptest.New(t, apptest.Options{})
	c1 := a.Repo.Head()
	r1 := release.NewID(time.Date(2026, 11, 22, 10, 0, 1, 0, time.UTC), c1)
	req := func(op, id, commit string) *node.Request {
		return &node.Request{Op: op, App: a.Config, Env: "test", Host: "local", Roles: []string{"web"}, ID: id, Commit: commit}
	}
	mustOK(t, conn, req(node.OpPrepare, r1, c1))
	mustOK(t, conn, req(node.OpActivate, r1, c1))
	c2 := a.Repo.Commit("hangs", map[string]string{"HANG": "yes"})
	r2 := release.NewID(time.Date(2026, 11, 22, 10, 0, 2, 0, time.UTC), c2)
	mustOK(t, conn, req(node.OpPrepare, r2, c2))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		resp *node.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := node.Call(ctx, conn, req(node.OpActivate, r2, c2), nil)
		done <- result{resp, err}
	}()
	a.WaitStarted(t, a.Ports[0], r2, 60*time.Second)
	cancel()
	var res result
	select {
	case res = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the cancelled activate did not end within 60s")
	}
	if got := body(t, a.Ports[0]); !strings.Contains(got, r1) {
		t.Fatalf("port %d answers %q after the cancel, want release %s", a.Ports[0], got, r1)
	}
	if res.err != nil {
		t.Fatalf("no answer from the host after the cancel: %v", res.err)
	}
	if res.resp.OK || res.resp.Serving == nil || res.resp.Serving.Release != r1 || !res.resp.Serving.Healthy || res.resp.Active != r1 {
		t.Fatalf("response %+v serving %+v, want a failure serving %s healthy", res.resp, res.resp.Serving, r1)
	}
}
