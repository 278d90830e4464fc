package rollout_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/rollout/rollouttest"
)

// waitJournal waits (bounded) until the journal has n lines containing s.
func waitJournal(t *testing.T, j *rollouttest.Journal, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(j.Matching(s)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("journal never had %d lines with %q:\n%s", n, s, j)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAllAtOnceSwitchesWaitForEveryHost: with one host slow to get ready
// (a slow session or before_activate hook), no host switches until it is
// ready; then all switch.
func TestAllAtOnceSwitchesWaitForEveryHost(t *testing.T) {
	f := newMemFleet(t, 4, "")
	slow := make(chan struct{})
	f.hosts[2].BeforeReady = func(ctx context.Context, h *rollouttest.Host) {
		select {
		case <-slow:
		case <-ctx.Done():
		}
	}
	done := make(chan *rollout.Report, 1)
	go func() { done <- f.deploy(t) }()
	t.Cleanup(func() {
		select {
		case <-slow:
		default:
			close(slow)
		}
		<-done
	})
	waitJournal(t, f.journal, " ready", 3)
	if got := f.journal.Matching("activate"); len(got) > 0 {
		t.Fatalf("a host switched before every host was ready: %v\n%s", got, f.journal)
	}
	for _, h := range f.hosts {
		if len(h.Switches()) > 0 || h.Active() != "R1" {
			t.Fatalf("%s switched before h3 was ready: %s", h.Name(), f.actives())
		}
	}
	close(slow)
	rep := <-done
	done <- rep // for the cleanup
	if !rep.OK() {
		t.Fatalf("deploy failed: %s\n%s", rep.Err, f.journal)
	}
	if got := f.actives(); got != "h1=R2 h2=R2 h3=R2 h4=R2" {
		t.Fatalf("hosts run %s, want all R2", got)
	}
	lines := f.journal.Lines()
	lastReady, firstActivate := -1, -1
	for i, l := range lines {
		if strings.HasSuffix(l, " ready") {
			lastReady = i
		}
		if strings.Contains(l, " activate R2") && firstActivate < 0 {
			firstActivate = i
		}
	}
	if firstActivate < lastReady {
		t.Fatalf("a host switched before the last one was ready:\n%s", f.journal)
	}
}

// TestAllAtOnceOneFailsBeforeReadySwitchesNone: a host whose activation
// fails before its switch (a before_activate hook) calls the switch off:
// no host switches, the others are reported not switched.
func TestAllAtOnceOneFailsBeforeReadySwitchesNone(t *testing.T) {
	f := newMemFleet(t, 4, "")
	// h3 fails only once the others are ready, so they are really waiting.
	f.hosts[2].BeforeReady = func(ctx context.Context, h *rollouttest.Host) {
		waitJournal(t, f.journal, " ready", 3)
	}
	f.hosts[2].FailBeforeSwitch = "hook check-disk failed"
	rep := f.deploy(t)
	if rep.OK() {
		t.Fatalf("deploy succeeded with a failed host:\n%s", f.journal)
	}
	if got := f.actives(); got != "h1=R1 h2=R1 h3=R1 h4=R1" {
		t.Fatalf("hosts run %s, want all still on R1\n%s", got, f.journal)
	}
	for _, h := range f.hosts {
		if len(h.Switches()) > 0 {
			t.Fatalf("%s switched: %s", h.Name(), f.journal)
		}
	}
	if len(f.journal.Matching("not switched")) != 3 {
		t.Fatalf("want the 3 ready hosts told not to switch:\n%s", f.journal)
	}
	for _, res := range rep.Hosts {
		switch res.Host {
		case "h3":
			if res.State != rollout.StateFailed || !strings.Contains(res.Error, "check-disk") {
				t.Errorf("h3: %+v", res)
			}
		default:
			if res.State != rollout.StateSkipped || !strings.Contains(res.Error, "h3 failed before its switch") {
				t.Errorf("%s: %+v", res.Host, res)
			}
		}
	}
	if !strings.Contains(rep.Err, "called off") || !strings.Contains(rep.Err, "keeps its previous release") {
		t.Errorf("report error: %s", rep.Err)
	}
}

// TestAllAtOnceCancelBeforeGoSwitchesNone: a deploy interrupted while
// hosts wait for the go switches none of them.
func TestAllAtOnceCancelBeforeGoSwitchesNone(t *testing.T) {
	f := newMemFleet(t, 4, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.hosts[3].BeforeReady = func(hctx context.Context, h *rollouttest.Host) {
		waitJournal(t, f.journal, " ready", 3)
		cancel()
		<-hctx.Done()
	}
	rep, _ := rollout.Deploy(ctx, f.plan, rollouttest.Targets(f.hosts), &nopObserver{})
	if rep.OK() {
		t.Fatalf("interrupted deploy reported OK:\n%s", f.journal)
	}
	if got := f.actives(); got != "h1=R1 h2=R1 h3=R1 h4=R1" {
		t.Fatalf("hosts run %s, want all still on R1\n%s", got, f.journal)
	}
	if !strings.Contains(rep.Err, "interrupted") && !strings.Contains(rep.Err, "h4 failed") {
		t.Errorf("report error: %s", rep.Err)
	}
}
