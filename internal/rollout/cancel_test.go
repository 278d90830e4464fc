package rollout_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/testenv/apptest"
)

// TestInterruptedActivateSummarySaysWhatRuns interrupts a deploy (Ctrl-C)
// while the new release's health check waits: the host goes back to the
// previous release, and the report says so from what the host checked,
// rather than assuming it.
func TestInterruptedActivateSummarySaysWhatRuns(t *testing.T) {
	a := apptest.New(t, apptest.Options{Hosts: "      - {name: h1, transport: local, roles: [web]}\n"})
	env := a.Config.Environments["test"]
	targets := []rollout.Target{rootedTarget(apptest.DroverBinary(t), env.Hosts[0], a.DeployTo)}
	plan := func(commit string, n int) *rollout.Plan {
		return &rollout.Plan{App: a.Config, Env: env, ID: release.NewID(time.Unix(int64(n)*1000, 0), commit), Commit: commit,
			Spec: "branch:main", By: "test@here", Strategy: config.Strategy{Type: config.StrategyAllAtOnce}, Lease: 10 * time.Second}
	}
	first := plan(a.Repo.Head(), 1)
	if rep, err := rollout.Deploy(context.Background(), first, targets, &nopObserver{}); err != nil || !rep.OK() {
		t.Fatalf("first deploy: %v %+v", err, rep)
	}
	second := plan(a.Repo.Commit("hangs", map[string]string{"HANG": "yes"}), 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type outcome struct {
		rep *rollout.Report
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		rep, err := rollout.Deploy(ctx, second, targets, &nopObserver{})
		done <- outcome{rep, err}
	}()
	a.WaitStarted(t, a.Ports[0], second.ID, 60*time.Second)
	cancel()
	var o outcome
	select {
	case o = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the interrupted deploy did not end within 60s")
	}
	if o.err != nil {
		t.Fatal(o.err)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", a.Ports[0]))
	if err != nil {
		t.Fatalf("nothing serves after the interrupted deploy: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), first.ID) {
		t.Fatalf("serving %q, want release %s", body, first.ID)
	}
	h := o.rep.Hosts[0]
	if o.rep.OK() || h.Serving == nil || h.Serving.Release != first.ID || !h.Serving.Healthy || h.Release != first.ID {
		t.Fatalf("host result %+v (serving %+v), want a failure serving %s healthy", h, h.Serving, first.ID)
	}
	if want := "serves " + first.ID + " (healthy)"; !strings.Contains(o.rep.Err, want) {
		t.Errorf("summary %q does not say %q", o.rep.Err, want)
	}
}
