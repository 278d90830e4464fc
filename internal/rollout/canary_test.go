package rollout_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

// gateFunc is a rollout.Gate from a function.
type gateFunc func(ctx context.Context, hosts []string) error

func (g gateFunc) Wait(ctx context.Context, hosts []string) error { return g(ctx, hosts) }

// canaryFleet is n hosts with strategy canary behind an in-memory load
// balancer; gate decides, after writing "gate HOSTS" to the journal.
func canaryFleet(t *testing.T, n int, strategy string, decide error) *memFleet {
	f := newMemFleet(t, n, strategy)
	f.withLB()
	f.plan.Gate = gateFunc(func(ctx context.Context, hosts []string) error {
		f.journal.Add("gate %s", strings.Join(hosts, ","))
		return decide
	})
	return f
}

const canaryYAML = "{type: canary, canary: {wait: 1m, url: 'http://127.0.0.1:1/'}}"

// TestCanaryPromote: the first batch activates, the gate is asked while
// it runs the release in the load balancer, then the others follow.
func TestCanaryPromote(t *testing.T) {
	f := canaryFleet(t, 4, canaryYAML, nil)
	rep := f.deploy(t)
	if !rep.OK() {
		t.Fatalf("deploy failed: %s\n%s", rep.Err, f.journal)
	}
	lines := f.journal.Lines()
	gate := slices.Index(lines, "gate h1")
	if gate < 0 || gate < slices.Index(lines, "lb enable h1") || gate > slices.Index(lines, "lb drain h2") {
		t.Errorf("the gate was not asked between the canary and the rest:\n%s", f.journal)
	}
	if got := f.actives(); got != "h1=R2 h2=R2 h3=R2 h4=R2" {
		t.Errorf("hosts run %s", got)
	}
}

// TestCanaryAbort: a gate that fails rolls the canary back through drain
// and enable; no other host moves.
func TestCanaryAbort(t *testing.T) {
	f := canaryFleet(t, 4, "{type: canary, batch: 2, canary: {wait: 1m, command: 'true'}}", errors.New("the canary check failed: HTTP 500"))
	rep := f.deploy(t)
	if rep.OK() || !strings.Contains(rep.Err, "canary aborted: the canary check failed: HTTP 500") || !strings.Contains(rep.Err, "switched back h1 → R1, h2 → R1") {
		t.Fatalf("report error %q", rep.Err)
	}
	if got := f.actives(); got != "h1=R1 h2=R1 h3=R1 h4=R1" {
		t.Errorf("hosts run %s", got)
	}
	if got := f.journal.Matching("h3 activate"); len(got) != 0 {
		t.Errorf("h3 activated after the abort: %v", got)
	}
	lines := f.journal.Lines()
	if i := slices.Index(lines, "h1 rollback R1"); i < 0 || !slices.Contains(lines[i:], "lb enable h1") || !slices.Contains(lines[:i], "lb drain h1") {
		t.Errorf("h1 not rolled back through drain and enable:\n%s", f.journal)
	}
	for _, h := range rep.Hosts {
		if h.Host == "h3" && h.State != "skipped" {
			t.Errorf("h3: %s", h.State)
		}
	}
}

// TestCanaryFailureNeverAsksTheGate: a canary whose health check fails is
// back on R1 and the rollout stops before the gate or any other host.
func TestCanaryFailureNeverAsksTheGate(t *testing.T) {
	f := canaryFleet(t, 3, canaryYAML, nil)
	f.hosts[0].FailActivate = true
	rep := f.deploy(t)
	if rep.OK() || !strings.Contains(rep.Err, "1 host(s) failed (h1)") {
		t.Fatalf("report error %q", rep.Err)
	}
	if got := f.journal.Matching("gate"); len(got) != 0 {
		t.Errorf("the gate was asked about a failed canary: %v", got)
	}
	if got := f.actives(); got != "h1=R1 h2=R1 h3=R1" {
		t.Errorf("hosts run %s", got)
	}
}
