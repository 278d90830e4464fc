package rollout_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/rollout/rollouttest"
)

// phaseObserver records, for each host that finished activating, the phase
// (batch) it was in.
type phaseObserver struct {
	nopObserver
	mu      sync.Mutex
	phase   string
	batches map[string][]string // phase → hosts done in it
	order   []string
}

func (o *phaseObserver) Phase(p string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.phase = p
	if o.batches == nil {
		o.batches = map[string][]string{}
	}
	o.order = append(o.order, p)
}

func (o *phaseObserver) Done(host string, r *rollout.HostResult) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if r.Phase == "activate" {
		o.batches[o.phase] = append(o.batches[o.phase], host)
	}
}

// withLB puts an in-memory load balancer in front of the fleet, with
// short waits.
func (f *memFleet) withLB() *rollouttest.Balancer {
	b := rollouttest.NewBalancer(f.journal, f.hosts)
	f.plan.Balancer = b
	f.plan.Poll, f.plan.UpTimeout = time.Millisecond, 200*time.Millisecond
	return b
}

func (f *memFleet) deployObserved(t *testing.T, obs rollout.Observer) *rollout.Report {
	t.Helper()
	rep, err := rollout.Deploy(context.Background(), f.plan, rollouttest.Targets(f.hosts), obs)
	if err != nil && rep == nil {
		t.Fatal(err)
	}
	return rep
}

// TestRollingBatches: hosts activate in batches of `batch` (a count or a
// percent rounded up), in drover.yml order, through the load balancer.
func TestRollingBatches(t *testing.T) {
	tests := []struct {
		n     int
		batch string
		want  [][]string
	}{
		{5, "2", [][]string{{"h1", "h2"}, {"h3", "h4"}, {"h5"}}},
		{5, "25%", [][]string{{"h1", "h2"}, {"h3", "h4"}, {"h5"}}},
		{4, "25%", [][]string{{"h1"}, {"h2"}, {"h3"}, {"h4"}}},
		{3, "10%", [][]string{{"h1"}, {"h2"}, {"h3"}}},
	}
	for _, tc := range tests {
		t.Run(tc.batch, func(t *testing.T) {
			f := newMemFleet(t, tc.n, "{type: rolling, batch: '"+tc.batch+"'}")
			b := f.withLB()
			obs := &phaseObserver{}
			rep := f.deployObserved(t, obs)
			if !rep.OK() {
				t.Fatalf("deploy failed: %s\n%s", rep.Err, f.journal)
			}
			var got [][]string
			for _, p := range obs.order {
				if strings.HasPrefix(p, "activate") && len(obs.batches[p]) > 0 {
					hosts := slices.Clone(obs.batches[p])
					slices.Sort(hosts)
					got = append(got, hosts)
				}
			}
			if !slices.EqualFunc(got, tc.want, slices.Equal) {
				t.Errorf("batches %v, want %v", got, tc.want)
			}
			for _, h := range f.hosts {
				if h.Active() != "R2" || !b.Enabled(h.Name()) {
					t.Errorf("%s runs %s, enabled %v", h.Name(), h.Active(), b.Enabled(h.Name()))
				}
			}
		})
	}
}

// TestRollingLBStepsInOrder: the run_once hook runs once, before any host
// is taken out; then each host is drained, activated, enabled and
// waited for before the next is drained.
func TestRollingLBStepsInOrder(t *testing.T) {
	f := newMemFleet(t, 3, "{type: rolling}")
	f.withLB()
	if rep := f.deploy(t); !rep.OK() {
		t.Fatalf("deploy failed: %s", rep.Err)
	}
	var steps []string
	for _, l := range f.journal.Lines() {
		if strings.HasPrefix(l, "lb ") || strings.Contains(l, " activate ") || strings.Contains(l, " hook ") {
			steps = append(steps, l)
		}
	}
	want := []string{"h1 hook migrate", "lb drain h1", "h1 activate R2", "lb enable h1", "lb drain h2", "h2 activate R2", "lb enable h2", "lb drain h3", "h3 activate R2", "lb enable h3"}
	if !slices.Equal(steps, want) {
		t.Errorf("steps:\n  %s\nwant:\n  %s", strings.Join(steps, "\n  "), strings.Join(want, "\n  "))
	}
}

// TestRollingMaxFailOverWholeRollout: one failure in each batch trips
// max_fail 1 at the second batch, however small each batch's share: the
// budget is the rollout's, not the batch's. The failed hosts are back on
// R1 and in the load balancer; the hosts after the stop never moved.
func TestRollingMaxFailOverWholeRollout(t *testing.T) {
	f := newMemFleet(t, 6, "{type: rolling, batch: 2, max_fail: 1}")
	b := f.withLB()
	f.hosts[1].FailActivate = true
	f.hosts[3].FailActivate = true
	rep := f.deploy(t)
	if rep.OK() || !strings.Contains(rep.Err, "2 host(s) failed (h2, h4), more than max_fail 1") {
		t.Fatalf("report error %q, want a stop past max_fail", rep.Err)
	}
	if got, want := f.actives(), "h1=R2 h2=R1 h3=R2 h4=R1 h5=R1 h6=R1"; got != want {
		t.Errorf("hosts run %s, want %s", got, want)
	}
	if got := f.journal.Matching("h5 "); slices.ContainsFunc(got, func(l string) bool { return strings.Contains(l, "activate") }) {
		t.Errorf("h5 activated after the stop: %v", got)
	}
	for _, h := range f.hosts {
		if !b.Enabled(h.Name()) {
			t.Errorf("%s left out of the load balancer", h.Name())
		}
	}
	for _, h := range rep.Hosts {
		if (h.Host == "h5" || h.Host == "h6") && h.State != rollout.StateSkipped {
			t.Errorf("%s: %s, want skipped", h.Host, h.State)
		}
	}
}

// TestRollingMaxFailPercentAllows: max_fail 25% of 8 allows two failures;
// the rollout goes on, exits OK and names the failed hosts.
func TestRollingMaxFailPercentAllows(t *testing.T) {
	f := newMemFleet(t, 8, "{type: rolling, batch: 2, max_fail: 25%}")
	f.withLB()
	f.hosts[0].FailActivate = true
	f.hosts[5].FailActivate = true
	rep := f.deploy(t)
	if !rep.OK() || rep.MaxFail != 2 {
		t.Fatalf("report OK %v (max_fail %d): %s", rep.OK(), rep.MaxFail, rep.Err)
	}
	if got, want := f.actives(), "h1=R1 h2=R2 h3=R2 h4=R2 h5=R2 h6=R1 h7=R2 h8=R2"; got != want {
		t.Errorf("hosts run %s, want %s", got, want)
	}
	if !slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.Contains(n, "h1, h6") }) {
		t.Errorf("notes %q do not name the failed hosts", rep.Notes)
	}
}

// TestRollingMinHealthyOddFleet: the load balancer never has fewer serving
// members than min_healthy (a percent of an odd fleet, rounded up) after a
// drain.
func TestRollingMinHealthyOddFleet(t *testing.T) {
	tests := []struct {
		n                 int
		batch, minHealthy string
		want              int
	}{
		{5, "2", "60%", 3},
		{5, "2", "50%", 3},
		{7, "3", "4", 4},
		{3, "1", "2", 2},
	}
	for _, tc := range tests {
		t.Run(tc.minHealthy, func(t *testing.T) {
			f := newMemFleet(t, tc.n, "{type: rolling, batch: "+tc.batch+", min_healthy: '"+tc.minHealthy+"'}")
			b := f.withLB()
			rep := f.deploy(t)
			if !rep.OK() {
				t.Fatalf("deploy failed: %s", rep.Err)
			}
			if got := b.MinServing(); got < tc.want {
				t.Errorf("%d members served after a drain, min_healthy needs %d", got, tc.want)
			}
		})
	}
}

// TestRollingMinHealthyWithHostAlreadyDown: h4 is down in the load balancer
// before the deploy. min_healthy 3 of 4: taking h1 out would leave two, so
// nothing is drained and the error names h4. With min_healthy 2 the
// rollout proceeds and h4 comes back with the new release.
func TestRollingMinHealthyWithHostAlreadyDown(t *testing.T) {
	f := newMemFleet(t, 4, "{type: rolling, min_healthy: 3}")
	f.withLB()
	f.hosts[3].SetServing(false)
	rep := f.deploy(t)
	if rep.OK() || !strings.Contains(rep.Err, "refusing to take h1 out") || !strings.Contains(rep.Err, "h4 (DOWN)") || !strings.Contains(rep.Err, "min_healthy needs 3") {
		t.Fatalf("report error %q, want a refusal naming h4", rep.Err)
	}
	if got := f.journal.Matching("lb drain"); len(got) != 0 {
		t.Errorf("drained below min_healthy: %v", got)
	}
	if got := f.journal.Matching("activate"); len(got) != 0 {
		t.Errorf("activated after the refusal: %v", got)
	}

	f = newMemFleet(t, 4, "{type: rolling, min_healthy: 2}")
	b := f.withLB()
	f.hosts[3].SetServing(false)
	rep = f.deploy(t)
	if !rep.OK() {
		t.Fatalf("deploy failed: %s\n%s", rep.Err, f.journal)
	}
	if got := b.MinServing(); got < 2 {
		t.Errorf("%d members served after a drain, want at least 2", got)
	}
	if got := f.actives(); got != "h1=R2 h2=R2 h3=R2 h4=R2" {
		t.Errorf("hosts run %s", got)
	}
}

// TestRollingNeverDrainsTheLastServing: min_healthy unset means one, never
// zero: a fleet of one behind a load balancer is refused, not emptied.
func TestRollingNeverDrainsTheLastServing(t *testing.T) {
	f := newMemFleet(t, 1, "{type: serial}")
	f.withLB()
	rep := f.deploy(t)
	if rep.OK() || !strings.Contains(rep.Err, "refusing to take h1 out") {
		t.Fatalf("report error %q, want a refusal", rep.Err)
	}
	if got := f.journal.Matching("lb drain"); len(got) != 0 {
		t.Errorf("drained the last serving member: %v", got)
	}
}

// TestRollingRollbackOnFailure: h3's health check fails; with
// rollback_on_failure h1 and h2, which moved, go back to R1 through drain
// and enable; h4 never moves; every member ends enabled.
func TestRollingRollbackOnFailure(t *testing.T) {
	f := newMemFleet(t, 4, "{type: rolling, rollback_on_failure: true}")
	b := f.withLB()
	f.hosts[2].FailActivate = true
	rep := f.deploy(t)
	if rep.OK() || !strings.Contains(rep.Err, "rollback_on_failure switched back h1 → R1, h2 → R1") {
		t.Fatalf("report error %q", rep.Err)
	}
	if got := f.actives(); got != "h1=R1 h2=R1 h3=R1 h4=R1" {
		t.Errorf("hosts run %s", got)
	}
	for _, name := range []string{"h1", "h2"} {
		var steps []string
		for _, l := range f.journal.Lines() {
			if strings.HasSuffix(l, " "+name) || strings.HasPrefix(l, name+" ") {
				steps = append(steps, l)
			}
		}
		i := slices.Index(steps, name+" rollback R1")
		if i < 2 || steps[i-1] != "lb drain "+name || i+1 >= len(steps) || steps[i+1] != "lb enable "+name {
			t.Errorf("%s was not switched back through drain and enable: %v", name, steps)
		}
	}
	for _, h := range f.hosts {
		if !b.Enabled(h.Name()) {
			t.Errorf("%s left out of the load balancer", h.Name())
		}
	}
}

// TestRollingLBUnreachableTouchesNothing: a load balancer that does not
// answer stops the rollout before any host is drained or activated.
func TestRollingLBUnreachableTouchesNothing(t *testing.T) {
	f := newMemFleet(t, 3, "{type: rolling}")
	b := f.withLB()
	b.SetUnreachable(true)
	rep := f.deploy(t)
	if rep.OK() || !strings.Contains(rep.Err, "cannot reach the load balancer, so no host was taken out or activated") {
		t.Fatalf("report error %q", rep.Err)
	}
	if got := f.journal.Matching("activate"); len(got) != 0 {
		t.Errorf("activated without a load balancer: %v", got)
	}
	if got := f.actives(); got != "h1=R1 h2=R1 h3=R1" {
		t.Errorf("hosts run %s", got)
	}
}

// TestRollingDrainTimeoutGoesOn: a member that keeps its connections past
// drain_timeout is activated anyway, and the report says so.
func TestRollingDrainTimeoutGoesOn(t *testing.T) {
	f := newMemFleet(t, 2, "{type: rolling}")
	b := f.withLB()
	b.SetDrainPolls(1 << 30)
	f.plan.Strategy.DrainTimeout = config.Duration(20 * time.Millisecond)
	rep := f.deploy(t)
	if !rep.OK() {
		t.Fatalf("deploy failed: %s", rep.Err)
	}
	if !slices.ContainsFunc(rep.Notes, func(n string) bool {
		return strings.HasPrefix(n, "h1: drain_timeout 20ms passed with") && strings.Contains(n, "connection(s) still active")
	}) {
		t.Errorf("notes %q do not say the drain timed out", rep.Notes)
	}
}

// TestRollingMinHealthyTime: h2 comes UP, then leaves service within
// min_healthy_time: it fails, goes back to R1 through drain and enable,
// and the rollout stops.
func TestRollingMinHealthyTime(t *testing.T) {
	f := newMemFleet(t, 3, "{type: rolling}")
	b := f.withLB()
	f.plan.Strategy.MinHealthyTime = config.Duration(50 * time.Millisecond)
	b.DownAfterEnable("h2", 3)
	rep := f.deploy(t)
	if rep.OK() || !strings.Contains(rep.Err, "h2") {
		t.Fatalf("report error %q, want h2 failed", rep.Err)
	}
	var h2 *rollout.HostResult
	for _, h := range rep.Hosts {
		if h.Host == "h2" {
			h2 = h
		}
	}
	if h2.State != rollout.StateFailed || !strings.Contains(h2.Error, "left service before min_healthy_time") || h2.Release != "R1" {
		t.Errorf("h2: %+v", h2)
	}
	if got := f.actives(); got != "h1=R2 h2=R1 h3=R1" {
		t.Errorf("hosts run %s", got)
	}
}

// TestAllAtOnceWindow: the activation window runs from the first switch
// to the last, as the hosts report them.
func TestAllAtOnceWindow(t *testing.T) {
	f := newMemFleet(t, 4, "")
	rep := f.deploy(t)
	if !rep.OK() {
		t.Fatal(rep.Err)
	}
	var first, last time.Time
	for _, h := range f.hosts {
		for _, s := range h.Switches() {
			if first.IsZero() || s.Before(first) {
				first = s
			}
			if s.After(last) {
				last = s
			}
		}
	}
	// The window is measured where the switch events arrive, so it is not
	// exactly the hosts' own figure, but never zero and within the rollout.
	if rep.Window <= 0 || rep.Window > rep.Elapsed || last.Sub(first) <= 0 {
		t.Errorf("window %s (switches %s apart, elapsed %s)", rep.Window, last.Sub(first), rep.Elapsed)
	}
}

// TestRollingInterruptedReenables: a deploy interrupted (Ctrl-C) while h2
// is out of the load balancer puts h2 back in and moves no further host.
func TestRollingInterruptedReenables(t *testing.T) {
	f := newMemFleet(t, 4, "{type: rolling}")
	b := f.withLB()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.hosts[1].OnActivate = func(*rollouttest.Host) { cancel() }
	rep, _ := rollout.Deploy(ctx, f.plan, rollouttest.Targets(f.hosts), &nopObserver{})
	if rep.OK() || !strings.Contains(rep.Err, "interrupted") {
		t.Fatalf("report error %q, want an interruption", rep.Err)
	}
	for _, h := range f.hosts {
		if !b.Enabled(h.Name()) {
			t.Errorf("%s left out of the load balancer after the interruption", h.Name())
		}
	}
	if got := f.journal.Matching("lb drain h3"); len(got) != 0 {
		t.Errorf("h3 drained after the interruption: %v", got)
	}
}

// TestRollingMinHealthyWithoutLB: without a load balancer, min_healthy is
// checked against what the rollout knows: after h1 stopped answering while
// it switched (and max_fail let it), a batch of two of five would leave
// two serving, fewer than 3.
func TestRollingMinHealthyWithoutLB(t *testing.T) {
	f := newMemFleet(t, 5, "{type: rolling, batch: 2, min_healthy: 3, max_fail: 2}")
	f.hosts[0].OnActivate = func(h *rollouttest.Host) { h.Unreachable = true }
	rep := f.deploy(t)
	if rep.OK() || !strings.Contains(rep.Err, "refusing to activate h3, h4: that would leave 2 of 5 hosts serving, fewer than min_healthy 3") {
		t.Fatalf("report error %q", rep.Err)
	}
}
