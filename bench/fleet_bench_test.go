package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/testenv/dbtest"
)

// fleetSetup is a `drover server` process with n simulated agents in
// helper processes, every agent long-polling.
type fleetSetup struct {
	srv   *serverProc
	admin *api.Client
	fleet *fleet
	join  time.Duration
	// rss and hwm (kB) of the server once every agent long-polls, before
	// any release.
	rss, hwm float64
}

// newFleetSetup starts the server on backend (dbtest.SQLite or
// dbtest.Postgres) and n agents in helper processes, at most
// DROVER_BENCH_FLEET_PER_PROC (5,000) in each.
func newFleetSetup(ctx context.Context, tb testing.TB, backend string, n int) *fleetSetup {
	tb.Helper()
	raiseFileLimit(tb, uint64(min(n, helperMaxAgents)+256))
	dbURL := ""
	if backend != dbtest.SQLite {
		dbURL = dbtest.New(tb, backend)
	}
	srv := startServer(ctx, tb, dbURL, n)
	per := envInt("DROVER_BENCH_FLEET_PER_PROC", 5000) // agents per helper process
	procs := (n + per - 1) / per
	t0 := time.Now()
	f := startFleet(tb, srv.url, srv.joins, procs)
	s := &fleetSetup{srv: srv, admin: newClient(tb, srv.url, srv.admin), fleet: f, join: time.Since(t0)}
	s.rss, s.hwm = procStatus(tb, srv.cmd.Process.Pid)
	return s
}

// releaseRun is what one release did across the fleet.
type releaseRun struct {
	rel      int64
	rollout  int64           // the server rollout that carried it; 0 without
	lat      []time.Duration // per agent: release create to its first desired state of the release
	last     time.Duration   // the slowest of lat
	cpu      float64         // server CPU seconds from create to the last agent's desired state
	startCPU float64         // ... to the last agent's StartUpgrade answered
	polls    float64         // long-polls per agent from create to the end
	cycleCPU float64         // ... to every agent done and long-polling again
	// barrier is the last prepare report, activated the last activation
	// report (zero outside a server rollout).
	barrier, activated time.Time
	// activateFirst and activateLast: the first and the last agent
	// receiving its activate task.
	activateFirst, activateLast time.Time
	created                     time.Time
}

// release creates a release (with strategy, when set) and waits until
// every agent received it, activated it and long-polls again, and (when
// the server runs rollouts) until its rollout ended.
func (s *fleetSetup) release(ctx context.Context, tb testing.TB, i int, strategy string, full bool) releaseRun {
	tb.Helper()
	f, pid := s.fleet, s.srv.cmd.Process.Pid
	f.wait(tb, "every agent long-polls before the release", 2*time.Minute, func() bool { return f.npoll == f.n })
	f.mu.Lock()
	p0 := f.polls
	f.mu.Unlock()
	c0 := procCPU(tb, pid)
	t0 := time.Now()
	rel, err := s.admin.CreateRelease(ctx, api.CreateRelease{App: benchApp, Env: benchEnv, Spec: "branch:main", Commit: releaseCommit(i), Strategy: strategy})
	if err != nil {
		tb.Fatal(err)
	}
	f.wait(tb, fmt.Sprintf("every agent received release %d", rel.ID), 5*time.Minute, func() bool { return f.count(rel.ID, 'D', "") == f.n })
	c1 := procCPU(tb, pid)
	r := releaseRun{rel: rel.ID, created: t0, cpu: c1 - c0}
	first := map[int]time.Time{}
	for _, e := range f.of(rel.ID, 'D', nil) {
		if at, ok := first[e.idx]; !ok || e.at.Before(at) {
			first[e.idx] = e.at
		}
		r.rollout = max(r.rollout, e.rollout)
	}
	for _, at := range first {
		d := at.Sub(t0)
		r.lat = append(r.lat, d)
		r.last = max(r.last, d)
	}
	slices.Sort(r.lat)
	if !full {
		tb.Logf("release %d (rollout %d): p50 %v, last %v, server CPU %.2f s to the last desired state; not waiting for the rest",
			r.rel, r.rollout, percentile(r.lat, 0.5).Round(time.Millisecond), r.last.Round(time.Millisecond), r.cpu)
		return r
	}
	f.wait(tb, fmt.Sprintf("every agent started an upgrade to release %d", rel.ID), 5*time.Minute, func() bool { return f.count(rel.ID, 'S', "") == f.n })
	c2 := procCPU(tb, pid)
	activated := func(e fleetEvent) bool { return e.action == api.ActionActivate }
	f.wait(tb, fmt.Sprintf("every agent activated release %d and long-polls again", rel.ID), 10*time.Minute, func() bool {
		return f.count(rel.ID, 'R', api.ActionActivate) == f.n && f.npoll == f.n
	})
	if r.rollout != 0 {
		waitRolloutEnd(ctx, tb, s.admin, r.rollout)
		for _, e := range f.of(rel.ID, 'R', nil) {
			switch e.action {
			case api.ActionPrepare:
				r.barrier = maxTime(r.barrier, e.at)
			case api.ActionActivate:
				r.activated = maxTime(r.activated, e.at)
			}
		}
		for _, e := range f.of(rel.ID, 'D', activated) {
			if r.activateFirst.IsZero() || e.at.Before(r.activateFirst) {
				r.activateFirst = e.at
			}
			r.activateLast = maxTime(r.activateLast, e.at)
		}
	}
	r.startCPU, r.cycleCPU = c2-c0, procCPU(tb, pid)-c0
	f.mu.Lock()
	r.polls = float64(f.polls-p0) / float64(f.n)
	f.mu.Unlock()
	tb.Logf("release %d (rollout %d): p50 %v, last %v, server CPU %.2f s to the last desired state, %.2f s in all, %.1f long-polls per agent, barrier→last activation %v",
		r.rel, r.rollout, percentile(r.lat, 0.5).Round(time.Millisecond), r.last.Round(time.Millisecond), r.cpu, r.cycleCPU, r.polls, r.activated.Sub(r.barrier).Round(time.Millisecond))
	return r
}

// releaseCommit is the commit of the i-th release of a benchmark: its
// first seven digits, which the engine's release ID holds, differ.
func releaseCommit(i int) string { return fmt.Sprintf("%07x", i+1) + strings.Repeat("0", 33) }

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// waitRolloutEnd waits until rollout id is no longer queued or running,
// through GET /api/v1/rollouts/{id}, and fails tb unless it succeeded.
func waitRolloutEnd(ctx context.Context, tb testing.TB, admin *api.Client, id int64) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		var ro api.Rollout
		err := getJSON(ctx, admin, fmt.Sprintf("%s/rollouts/%d", api.Prefix, id), &ro)
		switch {
		case err != nil:
			tb.Fatalf("rollout %d: %v", id, err)
		case ro.State == "succeeded":
			return
		case ro.State != "queued" && ro.State != "running":
			tb.Fatalf("rollout %d ended %s: %s", id, ro.State, ro.Error)
		case time.Now().After(deadline):
			tb.Fatalf("rollout %d still %s after 5m", id, ro.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// getJSON GETs path with the admin token and decodes the answer.
func getJSON(ctx context.Context, c *api.Client, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// fleetAgents is the fleet size of the fleet benchmarks
// (DROVER_BENCH_FLEET_AGENTS, default 10,000); the baseline in the same
// run is a tenth of it.
func fleetAgents() (baseline, n int) {
	n = envInt("DROVER_BENCH_FLEET_AGENTS", 10000)
	return max(1, n/10), n
}

// fleetReleases is how many releases one op of the fleet benchmarks
// creates (DROVER_BENCH_FLEET_RELEASES, default 5): the set-up (server,
// thousands of joins) is the expensive part, so one op holds several
// releases; run them with -benchtime 1x, and ignore ns/op.
func fleetReleases() int { return envInt("DROVER_BENCH_FLEET_RELEASES", 5) }

// BenchmarkFleetPropagation measures a `drover server` process (SQLite,
// then PostgreSQL) with N simulated agents in one or two other processes
// (DROVER_BENCH_FLEET_AGENTS, default 10,000), and N/10 as the baseline of
// the same run. One op is fleetReleases releases. Metrics: p50-ms and p99-ms over
// every agent of every release of the time from release create (the API
// call starting) to the agent receiving its first desired state of the
// release; last-ms the median over releases of the slowest agent;
// server-rss-MB (VmRSS) with every agent connected and long-polling,
// before any release, and server-hwm-MB its peak at the end;
// cpu-us/agent the server's CPU (utime+stime) from create to the last
// agent's desired state, per agent woken, start-cpu-us/agent to the last
// agent's StartUpgrade answered, and cycle-cpu-us/agent to every
// agent done (StartUpgrade, final report, hello) and long-polling again;
// join-s how long the agents took to join. CPU figures are medians over
// releases. With DROVER_BENCH_FLEET_CYCLE=0 one release is created and
// the benchmark ends once every agent received it (no start or cycle
// figures): for servers whose rollout at this size takes too long.
func BenchmarkFleetPropagation(b *testing.B) {
	base, n := fleetAgents()
	for _, backend := range []string{dbtest.SQLite, dbtest.Postgres} {
		for _, agents := range []int{base, n} {
			b.Run(fmt.Sprintf("%s/agents=%d", backend, agents), func(b *testing.B) {
				benchFleetPropagation(b, backend, agents)
			})
		}
	}
}

func benchFleetPropagation(b *testing.B, backend string, n int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := newFleetSetup(ctx, b, backend, n)
	full, releases := os.Getenv("DROVER_BENCH_FLEET_CYCLE") != "0", b.N*fleetReleases()
	if !full {
		releases = 1 // a second release would queue behind the unfinished rollout
	}
	var all, lasts []time.Duration
	var cpus, starts, cycles []float64
	for i := range releases {
		r := s.release(ctx, b, i, "", full)
		all = append(all, r.lat...)
		lasts = append(lasts, r.last)
		cpus = append(cpus, r.cpu)
		starts = append(starts, r.startCPU)
		cycles = append(cycles, r.cycleCPU)
	}
	_, hwm := procStatus(b, s.srv.cmd.Process.Pid)
	slices.Sort(all)
	slices.Sort(lasts)
	b.ReportMetric(ms(percentile(all, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(all, 0.99)), "p99-ms")
	b.ReportMetric(ms(percentile(lasts, 0.50)), "last-ms")
	b.ReportMetric(s.rss/1024, "server-rss-MB")
	b.ReportMetric(hwm/1024, "server-hwm-MB")
	b.ReportMetric(median(cpus)/float64(n)*1e6, "cpu-us/agent")
	if full {
		b.ReportMetric(median(starts)/float64(n)*1e6, "start-cpu-us/agent")
		b.ReportMetric(median(cycles)/float64(n)*1e6, "cycle-cpu-us/agent")
	}
	b.ReportMetric(s.join.Seconds(), "join-s")
}

// BenchmarkFleetRollout measures a server-run all-at-once rollout across
// 1,000 simulated agents (a tenth of DROVER_BENCH_FLEET_AGENTS) in another
// process, and 100 as the baseline of the same run, on SQLite and
// PostgreSQL. One op is fleetReleases releases, each with its rollout. Metrics, medians over
// rollouts: barrier-to-last-ms from the barrier (the last prepare report
// answered) to the last activation report answered; create-to-last-ms from
// release create to that last activation report; prepare-last-ms from
// create to the barrier; barrier-to-first-activate-ms from the barrier
// to the first agent receiving its activate task, activate-spread-ms from
// then to the last agent receiving it; server-cpu-ms the server's CPU for
// the whole rollout, from create to every agent long-polling again after
// its rollout ended. It skips when the server does not run rollouts
// (desired states carry no rollout).
func BenchmarkFleetRollout(b *testing.B) {
	base, _ := fleetAgents()
	for _, backend := range []string{dbtest.SQLite, dbtest.Postgres} {
		for _, agents := range []int{max(1, base/10), base} {
			b.Run(fmt.Sprintf("%s/agents=%d", backend, agents), func(b *testing.B) {
				benchFleetRollout(b, backend, agents)
			})
		}
	}
}

func benchFleetRollout(b *testing.B, backend string, n int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := newFleetSetup(ctx, b, backend, n)
	var windows, totals, prepares, toFirst, spreads, cpus []float64
	for i := range b.N * fleetReleases() {
		r := s.release(ctx, b, i, "all-at-once", true)
		if r.rollout == 0 {
			b.Skip("this server does not run rollouts: the desired states carry no rollout")
		}
		if r.barrier.IsZero() || r.activated.IsZero() {
			b.Fatalf("rollout %d: no prepare or no activation report (barrier %v, last activation %v)", r.rollout, r.barrier, r.activated)
		}
		windows = append(windows, ms(r.activated.Sub(r.barrier)))
		totals = append(totals, ms(r.activated.Sub(r.created)))
		prepares = append(prepares, ms(r.barrier.Sub(r.created)))
		toFirst = append(toFirst, ms(r.activateFirst.Sub(r.barrier)))
		spreads = append(spreads, ms(r.activateLast.Sub(r.activateFirst)))
		cpus = append(cpus, r.cycleCPU*1000)
	}
	b.ReportMetric(median(windows), "barrier-to-last-ms")
	b.ReportMetric(median(totals), "create-to-last-ms")
	b.ReportMetric(median(prepares), "prepare-last-ms")
	b.ReportMetric(median(toFirst), "barrier-to-first-activate-ms")
	b.ReportMetric(median(spreads), "activate-spread-ms")
	b.ReportMetric(median(cpus), "server-cpu-ms")
}

// TestFleetSmoke runs the fleet benchmarks' machinery once at a small
// size (DROVER_BENCH_SMOKE_AGENTS, default 200): a `drover server`
// process, the agents in a helper process, one release that every agent
// receives, activates and reports.
func TestFleetSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a drover server and a helper process")
	}
	if os.Getenv(helperEnv) == "1" {
		t.Skip("in a helper process")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := envInt("DROVER_BENCH_SMOKE_AGENTS", 200)
	s := newFleetSetup(ctx, t, dbtest.SQLite, n)
	r := s.release(ctx, t, 0, "", true)
	if len(r.lat) != n {
		t.Fatalf("%d agents received the release, want %d", len(r.lat), n)
	}
	if r.lat[0] <= 0 || r.last > time.Minute {
		t.Fatalf("latencies out of range: first %v, last %v", r.lat[0], r.last)
	}
	if s.rss <= 0 || r.cycleCPU < 0 {
		t.Fatalf("server RSS %v kB, cycle CPU %v s", s.rss, r.cycleCPU)
	}
	t.Logf("%d agents: p50 %v, last %v, server RSS %.0f MB, CPU %.0f µs per agent (cycle %.0f), rollout %d",
		n, percentile(r.lat, 0.5).Round(time.Millisecond), r.last.Round(time.Millisecond), s.rss/1024, r.cpu/float64(n)*1e6, r.cycleCPU/float64(n)*1e6, r.rollout)
	if out, _ := os.ReadFile(s.srv.dir + "/server.log"); strings.Contains(string(out), "panic") {
		t.Fatalf("the server panicked:\n%s", out)
	}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}
