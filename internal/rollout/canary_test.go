package rollout_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
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

// operator decides the canary of f's rollout on host h as soon as it is
// paused there, as `drover promote` or `drover abort` does. It returns a
// channel closed once it decided.
func operator(t *testing.T, f *memFleet, h int, decision string) <-chan struct{} {
	t.Helper()
	done := make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	go func() {
		defer close(done)
		host := f.hosts[h]
		for ctx.Err() == nil {
			c, _ := host.Canary(ctx, rollout.Call{}, "status", nil)
			if c != nil && c.Release == f.plan.ID {
				if _, err := host.Canary(ctx, rollout.Call{Release: c.Release, By: "ops@ci"}, decision, nil); err != nil {
					t.Errorf("%s: %v", decision, err)
				}
				return
			}
			time.Sleep(5 * time.Millisecond) // polls a condition, bounded by ctx
		}
	}()
	return done
}

// TestCanaryOperatorPromote: with no gate, the canary waits until an
// operator promotes it; then the other hosts follow and the record is
// cleared.
func TestCanaryOperatorPromote(t *testing.T) {
	f := newMemFleet(t, 4, "{type: canary}")
	f.withLB()
	done := operator(t, f, 0, release.CanaryPromote)
	rep := f.deploy(t)
	<-done
	if !rep.OK() {
		t.Fatalf("deploy failed: %s\n%s", rep.Err, f.journal)
	}
	lines := f.journal.Lines()
	dec := slices.Index(lines, "h1 canary promote by ops@ci")
	if dec < 0 || dec < slices.Index(lines, "lb enable h1") || dec > slices.Index(lines, "lb drain h2") {
		t.Errorf("the decision did not come between the canary and the rest:\n%s", f.journal)
	}
	if got := f.actives(); got != "h1=R2 h2=R2 h3=R2 h4=R2" {
		t.Errorf("hosts run %s", got)
	}
	if c, _ := f.hosts[0].Canary(context.Background(), rollout.Call{}, "status", nil); c != nil {
		t.Errorf("the canary record stayed after the rollout: %+v", c)
	}
	if !slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.Contains(n, "promoted by ops@ci") }) {
		t.Errorf("notes %q do not say who promoted", rep.Notes)
	}
}

// TestCanaryOperatorAbort: an operator's abort rolls the canary back
// through drain and enable, even while a gate check still runs; nobody else moves.
func TestCanaryOperatorAbort(t *testing.T) {
	f := newMemFleet(t, 4, canaryYAML)
	f.withLB()
	f.plan.Gate = gateFunc(func(ctx context.Context, hosts []string) error {
		<-ctx.Done() // a check that would run for long
		return ctx.Err()
	})
	done := operator(t, f, 0, release.CanaryAbort)
	rep := f.deploy(t)
	<-done
	if rep.OK() || !strings.HasPrefix(rep.Err, "canary aborted by ops@ci; ") {
		t.Fatalf("report error %q\n%s", rep.Err, f.journal)
	}
	if got := f.actives(); got != "h1=R1 h2=R1 h3=R1 h4=R1" {
		t.Errorf("hosts run %s", got)
	}
	lines := f.journal.Lines()
	if i := slices.Index(lines, "h1 rollback R1"); i < 0 || !slices.Contains(lines[i:], "lb enable h1") || !slices.Contains(lines[:i], "lb drain h1") {
		t.Errorf("h1 not rolled back through drain and enable:\n%s", f.journal)
	}
	if got := f.journal.Matching("h2 activate"); len(got) != 0 {
		t.Errorf("h2 activated after the abort: %v", got)
	}
}

// TestCanaryStaleDecisionIgnored: an abort left on the canary host by an
// earlier rollout of another release does not apply: the pause replaces
// it, and the gate's verdict promotes.
func TestCanaryStaleDecisionIgnored(t *testing.T) {
	f := canaryFleet(t, 3, canaryYAML, nil)
	f.hosts[0].SetCanary(&release.Canary{Release: "R0", Hosts: []string{"h1"}, Decision: release.CanaryAbort, By: "old@run"})
	rep := f.deploy(t)
	if !rep.OK() {
		t.Fatalf("deploy failed: %s\n%s", rep.Err, f.journal)
	}
	if got := f.actives(); got != "h1=R2 h2=R2 h3=R2" {
		t.Errorf("hosts run %s", got)
	}
	// A decision for another release than the paused one is refused.
	f.hosts[0].SetCanary(&release.Canary{Release: "R3", Hosts: []string{"h1"}})
	if _, err := f.hosts[0].Canary(context.Background(), rollout.Call{Release: "R2"}, release.CanaryPromote, nil); err == nil || !strings.Contains(err.Error(), "the paused canary is release R3") {
		t.Errorf("promote of R2 while R3 is paused: %v", err)
	}
}
