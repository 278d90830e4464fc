//go:build integration

package pull

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/testenv/dbtest"
)

// Server-run rollouts (`release create` on the control server, rolled out
// by it across the agents) with real parts: the drover server and agent
// binaries, git repositories, HAProxy, PostgreSQL (see rollout_fleet_test.go).

// TestRolloutRollingBehindHAProxyLosesNothing: four agents behind HAProxy,
// bounded load through it: a server-run rolling rollout, batch 1, with
// HAProxy as load balancer in the commit's drover.yml, drains each node
// before its restart (the app takes a second to boot) and loses no
// request, gets no non-2xx answer and makes HAProxy retry no connection.
// Afterwards every node serves the new release and none is left drained.
func TestRolloutRollingBehindHAProxyLosesNothing(t *testing.T) {
	f := newRolloutFleet(t, rolloutOptions{nodes: 4, haproxy: true})
	v1 := f.startV1()
	c2 := f.commitEnv("v2", f.strategyKeys(rollingLB, true), map[string]string{"BOOT": "1"})
	u := f.rolloutUnderLoad("the server-run rolling rollout behind haproxy", c2)
	if u.run.code != 0 || u.ro.State != "succeeded" {
		t.Fatalf("release create --wait: exit %d, rollout %s: %s\n%s%s", u.run.code, u.ro.State, u.ro.Error, u.run.stdout, u.run.stderr)
	}
	if u.ro.Strategy != "rolling" {
		t.Errorf("rollout strategy %q, want rolling from drover.yml", u.ro.Strategy)
	}
	if u.load.Failed() != 0 || len(u.load.Status) != 0 {
		t.Errorf("the rolling rollout lost %d of %d requests (non-2xx by status %v): %s", u.load.Failed(), u.load.Total, u.load.Status, u.load)
	}
	if u.retries != 0 {
		t.Errorf("haproxy retried %d connections to a node that refused them: a node restarted while it still took requests", u.retries)
	}
	v2 := u.ro.Release
	if u.load.Releases[v1] == 0 || u.load.Releases[v2] == 0 {
		t.Errorf("the load saw releases %v, want both %s and %s: it did not span the rollout", u.load.Releases, v1, v2)
	}
	f.wantOnRelease(v2, f.nodes...)
	f.allServing()
	f.wantNoneOut()
	// One node at a time: the activations do not overlap.
	var acts []event
	for _, n := range f.nodes {
		evs := nodeEvents(t, n)
		if c := count(evs, "activate", v2); c != 1 {
			t.Errorf("%s activated %s %d times, want once", n.name, v2, c)
		}
		for _, e := range evs {
			if e.kind == "activate" && e.release == v2 {
				acts = append(acts, e)
			}
		}
	}
	if got := f.migratedFor(v2); got != 1 {
		t.Errorf("the run_once migration ran %d times for %s, want once: %v", got, v2, f.migrated())
	}
	slices.SortFunc(acts, func(a, b event) int { return a.at.Compare(b.at) })
	for i := 1; i < len(acts); i++ {
		if gap := acts[i].at.Sub(acts[i-1].at); gap < time.Second {
			t.Errorf("%s activated %s after %s: with batch 1 and a 1 s boot, one node after the other takes longer", acts[i].node, gap, acts[i-1].node)
		}
	}
}

// TestRolloutRollingWithoutBalancerLosesRequests proves the check above
// can fail: the same rolling rollout with no load_balancer in drover.yml
// (no drain) restarts each node while HAProxy still sends it requests,
// and the load loses some (HAProxy runs without retries here, so none is
// hidden).
func TestRolloutRollingWithoutBalancerLosesRequests(t *testing.T) {
	f := newRolloutFleet(t, rolloutOptions{nodes: 4, haproxy: true})
	f.startV1()
	c2 := f.commitEnv("v2", f.strategyKeys(rollingOne, false), map[string]string{"BOOT": "1"})
	u := f.rolloutUnderLoad("the server-run rolling rollout without load balancer", c2)
	if u.run.code != 0 || u.ro.State != "succeeded" {
		t.Fatalf("release create --wait: exit %d, rollout %s: %s\n%s%s", u.run.code, u.ro.State, u.ro.Error, u.run.stdout, u.run.stderr)
	}
	if u.load.Failed() == 0 {
		t.Errorf("a rolling rollout without drain behind haproxy (no retries) lost no request: the no-loss test cannot fail: %s", u.load)
	}
	f.wantOnRelease(u.ro.Release, f.nodes...)
}

// TestRolloutTwoReleasesOneAfterTheOther: two `release create` at once on
// one environment: the first rollout runs, the second waits queued
// (position 1) and starts only after the first ended; on every node all
// of the first release's work happens before any of the second's, each
// release is prepared and activated once per node, and the migration ran
// once per release.
func TestRolloutTwoReleasesOneAfterTheOther(t *testing.T) {
	f := newRolloutFleet(t, rolloutOptions{})
	f.startV1()
	keys := f.strategyKeys(rollingOne, false)
	commits := []string{
		f.commitEnv("v2", keys, map[string]string{"GATED": ""}),
		f.commitEnv("v3", keys, map[string]string{"GATED": ""}),
	}
	// As from two CI machines: each its own cache (and repository mirror);
	// TestReleaseCreateTogetherOnOneMachine shares one.
	created := f.createTogether(commits, true)
	// FIFO: the rollout created first runs first.
	if created[1].Rollout.ID < created[0].Rollout.ID {
		created[0], created[1] = created[1], created[0]
		commits[0], commits[1] = commits[1], commits[0]
	}
	first, second := created[0], created[1]
	for _, n := range f.nodes {
		f.atGate(n, commits[0])
	}
	ro1, ro2 := f.rollout(first.Rollout.ID), f.rollout(second.Rollout.ID)
	if ro1.State != "running" || ro2.State != "queued" || ro2.Position != 1 {
		t.Errorf("with the first rollout in prepare: first %s, second %s position %d; want running, queued position 1", ro1.State, ro2.State, ro2.Position)
	}
	for _, n := range f.nodes {
		for _, e := range nodeEvents(t, n) {
			if e.commit == commits[1] {
				t.Errorf("%s began the second release (%s) while the first was in prepare", n.name, e.kind)
			}
		}
	}
	// Both gates open at once: nothing but the queue holds the second back.
	f.writeGates(commits[1])
	f.writeGates(commits[0])
	ro1 = f.waitRollout(first.Rollout.ID, bound)
	ro2 = f.waitRollout(second.Rollout.ID, bound)
	if ro1.State != "succeeded" || ro2.State != "succeeded" {
		t.Fatalf("rollouts: first %s (%s), second %s (%s); want both succeeded", ro1.State, ro1.Error, ro2.State, ro2.Error)
	}
	if ro1.EndedAt.IsZero() || ro2.StartedAt.IsZero() || ro2.StartedAt.Before(ro1.EndedAt) {
		t.Errorf("the second rollout started at %s, the first ended at %s: want the second to start after", ro2.StartedAt, ro1.EndedAt)
	}
	id1, id2 := ro1.Release, ro2.Release
	if id1 == "" || id2 == "" {
		t.Fatalf("the rollouts name no engine release: first %+v, second %+v", ro1, ro2)
	}
	var lastOfFirst, firstOfSecond event
	for _, n := range f.nodes {
		evs := nodeEvents(t, n)
		for _, id := range []string{id1, id2} {
			for _, kind := range []string{"prepare", "activate"} {
				if c := count(evs, kind, id); c != 1 {
					t.Errorf("%s: %s %s ran %d times, want once", n.name, kind, id, c)
				}
			}
		}
		for _, e := range evs {
			if e.release == id1 && e.at.After(lastOfFirst.at) {
				lastOfFirst = e
			}
			if e.release == id2 && (firstOfSecond.at.IsZero() || e.at.Before(firstOfSecond.at)) {
				firstOfSecond = e
			}
		}
	}
	if !firstOfSecond.at.After(lastOfFirst.at) {
		t.Errorf("interleaved: %s began %s of the second release at %s, before %s's %s of the first at %s",
			firstOfSecond.node, firstOfSecond.kind, firstOfSecond.at.Format(time.StampMicro), lastOfFirst.node, lastOfFirst.kind, lastOfFirst.at.Format(time.StampMicro))
	}
	f.wantOnRelease(id2, f.nodes...)
	for _, id := range []string{id1, id2} {
		if got := f.migratedFor(id); got != 1 {
			t.Errorf("migration ran %d times for %s, want once: %v", got, id, f.migrated())
		}
	}
}

// createTogether runs `release create` of each commit at once (no
// --wait), each with its own XDG cache when ownCache, and checks that each
// resolved its commit and sent drover.yml (the rollout takes its rolling
// strategy); it returns the answers in the order of commits.
func (r *rolloutFleet) createTogether(commits []string, ownCache bool) []api.ReleaseCreated {
	r.t.Helper()
	runs := make([]result, len(commits))
	var wg sync.WaitGroup
	for i, c := range commits {
		var extra []string
		if ownCache {
			extra = []string{"XDG_CACHE_HOME=" + filepath.Join(r.root, fmt.Sprintf("cache-%d", i))}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs[i] = r.droverEnv(r.root, 60*time.Second, extra, createArgs(r.repo.Dir, c)...)
		}()
	}
	wg.Wait()
	created := make([]api.ReleaseCreated, len(commits))
	for i, res := range runs {
		if res.code != 0 {
			r.t.Fatalf("release create %s: exit %d\n%s%s", commits[i][:7], res.code, res.stdout, res.stderr)
		}
		created[i] = decode[api.ReleaseCreated](r.t, "release create -o json", res.stdout)
		if created[i].Rollout == nil {
			r.t.Fatalf("release create %s: no rollout in %s", commits[i][:7], res.stdout)
		}
		if ro := created[i].Rollout; created[i].Commit != commits[i] || ro.Strategy != "rolling" || ro.Release == "" {
			r.t.Errorf("release create %s together with another: commit %q, rollout strategy %q, release %q; want the commit resolved and drover.yml's rolling strategy\nstderr: %s",
				commits[i][:7], created[i].Commit, ro.Strategy, ro.Release, res.stderr)
		}
	}
	return created
}

// TestReleaseCreateTogetherOnOneMachine: two `release create` at once on
// one machine (one CI runner, one cache with one repository mirror): each
// resolves its commit and sends drover.yml, so each rollout takes the
// environment's strategy from it; neither silently falls back to the
// default strategy (no drain) because the other held the mirror.
func TestReleaseCreateTogetherOnOneMachine(t *testing.T) {
	f := newRolloutFleet(t, rolloutOptions{nodes: 1})
	f.startV1()
	keys := f.strategyKeys(rollingOne, false)
	for round := range 3 { // a race: give it a few chances
		commits := []string{
			f.commitEnv(fmt.Sprintf("a%d", round), keys, nil),
			f.commitEnv(fmt.Sprintf("b%d", round), keys, nil),
		}
		created := f.createTogether(commits, false)
		for _, rc := range created {
			f.waitRollout(rc.Rollout.ID, bound)
		}
		if t.Failed() {
			return
		}
	}
}

// TestRolloutServerKilledSQLite: the server dies (SIGKILL) while every
// node is in the prepare of a rolling rollout, and is started again on the
// same SQLite data: the rollout finishes, every node prepared and
// activated the release once, and the run_once migration ran once.
func TestRolloutServerKilledSQLite(t *testing.T) {
	f := newRolloutFleet(t, rolloutOptions{serverArgs: leaseArgs(t)})
	f.startV1()
	c2 := f.commitEnv("v2", f.strategyKeys(rollingOne, false), map[string]string{"GATED": ""})
	rc := f.create(c2)
	for _, n := range f.nodes {
		f.atGate(n, c2)
	}
	if ro := f.rollout(rc.Rollout.ID); ro.State != "running" {
		t.Fatalf("rollout %d with every node in prepare: %s, want running", ro.ID, ro.State)
	}
	f.server.kill(t)
	f.startServer()
	f.writeGates(c2)
	ro := f.waitRollout(rc.Rollout.ID, 110*time.Second)
	f.wantRanOnce(ro)
}

// TestRolloutServerKilledPostgresTakeover: two server replicas on one
// PostgreSQL; the one running the rollout (its runner in `drover
// rollouts`) dies (SIGKILL) while every node is in prepare; the other
// takes the rollout over once the lease lapsed and finishes it: every node
// prepared and activated once, the migration ran once.
func TestRolloutServerKilledPostgresTakeover(t *testing.T) {
	db := dbtest.New(t, dbtest.Postgres)
	f := newRolloutFleet(t, rolloutOptions{db: db, replicas: 2, serverArgs: leaseArgs(t)})
	f.startV1()
	c2 := f.commitEnv("v2", f.strategyKeys(rollingOne, false), map[string]string{"GATED": ""})
	rc := f.create(c2)
	for _, n := range f.nodes {
		f.atGate(n, c2)
	}
	var ro api.Rollout
	f.waitFor("the rollout names its runner", func() (bool, string) {
		ro = f.rollout(rc.Rollout.ID)
		return ro.State == "running" && ro.Runner != "", fmt.Sprintf("%s runner %q", ro.State, ro.Runner)
	})
	victim := -1
	for i := range f.replicas {
		if strings.Contains(ro.Runner, replicaName(i)) {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatalf("rollout runner %q names neither %s nor %s", ro.Runner, replicaName(0), replicaName(1))
	}
	t.Logf("killing %s, which runs rollout %d", replicaName(victim), ro.ID)
	f.replicas[victim].proc.kill(t)
	f.writeGates(c2)
	ro = f.waitRollout(rc.Rollout.ID, 110*time.Second)
	f.wantRanOnce(ro)
	if ro.Runner != "" && strings.Contains(ro.Runner, replicaName(victim)) {
		t.Errorf("the finished rollout names the killed %s as its runner (%q): the other replica did not take it over", replicaName(victim), ro.Runner)
	}
	if !f.replicas[1-victim].proc.alive() {
		t.Errorf("the surviving replica exited")
	}
}

// wantRanOnce checks a rollout that survived its server: it succeeded,
// every node serves its release, prepared and activated it once, and the
// migration ran once.
func (r *rolloutFleet) wantRanOnce(ro api.Rollout) {
	r.t.Helper()
	if ro.State != "succeeded" {
		r.t.Fatalf("rollout %d after the server was killed: %s: %s; nodes %+v", ro.ID, ro.State, ro.Error, ro.Nodes)
	}
	r.wantOnRelease(ro.Release, r.nodes...)
	for _, n := range r.nodes {
		evs := nodeEvents(r.t, n)
		for _, kind := range []string{"prepare", "activate"} {
			if c := count(evs, kind, ro.Release); c != 1 {
				r.t.Errorf("%s: %s of %s ran %d times, want once", n.name, kind, ro.Release, c)
			}
		}
	}
	if got := r.migratedFor(ro.Release); got != 1 {
		r.t.Errorf("the run_once migration ran %d times for %s, want once: %v", got, ro.Release, r.migrated())
	}
}

// nodeTimeout is the server's --node-timeout in the tests of a dead
// agent: longer than the agent's heartbeat (at least every 10 s while it
// works), short enough for the test.
const nodeTimeout = 20 * time.Second

// TestRolloutAgentKilledMidPrepare: during a rolling rollout behind
// HAProxy an agent dies (SIGKILL) in prepare. The server (--node-timeout
// nodeTimeout) counts its node failed once it stops reporting; with max_fail 0 the
// rollout stops and no node moves, with max_fail 1 it goes on and the
// other nodes end on the release. Either way no node is left drained in
// HAProxy and the dead agent's node keeps serving the old release.
func TestRolloutAgentKilledMidPrepare(t *testing.T) {
	for _, tc := range []struct {
		name    string
		maxFail int
	}{{"max_fail 0 stops", 0}, {"max_fail 1 goes on", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRolloutFleet(t, rolloutOptions{nodes: 4, haproxy: true, serverArgs: []string{"--node-timeout", nodeTimeout.String()}})
			v1 := f.startV1()
			strategy := fmt.Sprintf("{type: rolling, batch: 1, min_healthy: 2, max_fail: %d}", tc.maxFail)
			c2 := f.commitEnv("v2", f.strategyKeys(strategy, true), map[string]string{"GATED": ""})
			rc := f.create(c2)
			for _, n := range f.nodes {
				f.atGate(n, c2)
			}
			victim := f.nodes[1]
			victim.agent.kill(t)
			// Its orphaned prepare hook may end now: the agent is gone.
			f.writeGates(c2)
			ro := f.waitRollout(rc.Rollout.ID, bound)
			v2 := ro.Release
			if v2 == "" {
				v2 = releaseID(rc.Release)
			}
			i := slices.IndexFunc(ro.Nodes, func(n api.RolloutNode) bool { return n.Node == victim.name })
			if i < 0 || ro.Nodes[i].State != "failed" || !strings.Contains(ro.Nodes[i].Error, "report") {
				t.Errorf("rollout %d: the dead agent's %s is not failed for not reporting: %+v", ro.ID, victim.name, ro.Nodes)
			}
			t.Logf("rollout %d: %s (%q); nodes %+v", ro.ID, ro.State, ro.Error, ro.Nodes)
			if tc.maxFail == 0 {
				if ro.State != "failed" || ro.Error == "" {
					t.Errorf("rollout with max_fail 0: %s (%q), want failed with the reason", ro.State, ro.Error)
				}
				for _, n := range f.nodes {
					if c := count(nodeEvents(t, n), "activate", v2); c != 0 || active(n) != v1 {
						t.Errorf("%s moved (activated %s %d times, current %s) although a node failed in prepare and max_fail is 0", n.name, v2, c, active(n))
					}
				}
			} else {
				if ro.State != "succeeded" {
					t.Fatalf("rollout with max_fail 1 and one node failed in prepare: %s (%q), want succeeded on the other nodes", ro.State, ro.Error)
				}
				for _, n := range f.nodes {
					if n != victim {
						f.wantOnRelease(v2, n)
					}
				}
			}
			f.wantOnRelease(v1, victim)
			f.allServing()
			f.wantNoneOut()
		})
	}
}

// TestRolloutAgentKilledDrainedGoesOn: the riskiest moment to lose an
// agent behind a load balancer: its node is drained in HAProxy and the
// agent is in its activation (a before_activate hook) when it dies
// (SIGKILL). The server counts the node failed once it stops reporting,
// puts it back in HAProxy (its app still serves the old release), and with
// max_fail 1 rolls the other nodes on.
func TestRolloutAgentKilledDrainedGoesOn(t *testing.T) {
	f := newRolloutFleet(t, rolloutOptions{nodes: 4, haproxy: true, serverArgs: []string{"--node-timeout", nodeTimeout.String()}})
	v1 := f.startV1()
	c2 := f.commitEnv("v2", f.strategyKeys("{type: rolling, batch: 1, min_healthy: 2, max_fail: 1}", true), map[string]string{"GATED_ACTIVATE": ""})
	victim := f.nodes[1]
	for _, n := range f.nodes {
		if n != victim {
			mustWrite(t, n.shared("act-gate-"+c2), "")
		}
	}
	rc := f.create(c2)
	f.waitFor(victim.name+" in its activation", func() (bool, string) {
		_, err := os.Stat(victim.shared("at-act-gate-" + c2))
		return err == nil, fmt.Sprint(err)
	})
	if s := f.hap.States(t)[victim.name]; !s.Drained() {
		t.Errorf("%s is activating but not drained in haproxy: %v", victim.name, s)
	}
	victim.agent.kill(t)
	mustWrite(t, victim.shared("act-gate-"+c2), "") // its orphaned hook may end
	ro := f.waitRollout(rc.Rollout.ID, bound)
	t.Logf("rollout %d: %s (%q); nodes %+v", ro.ID, ro.State, ro.Error, ro.Nodes)
	i := slices.IndexFunc(ro.Nodes, func(n api.RolloutNode) bool { return n.Node == victim.name })
	if i < 0 || ro.Nodes[i].State != "failed" || !strings.Contains(ro.Nodes[i].Error, "report") {
		t.Errorf("rollout %d: the dead agent's %s is not failed for not reporting: %+v", ro.ID, victim.name, ro.Nodes)
	}
	if ro.State != "succeeded" {
		t.Errorf("rollout with max_fail 1 and one node lost in activation: %s (%q), want succeeded on the others", ro.State, ro.Error)
	}
	for _, n := range f.nodes {
		if n != victim {
			f.wantOnRelease(ro.Release, n)
		}
	}
	f.wantOnRelease(v1, victim)
	f.allServing()
	f.wantNoneOut()
}

// TestRolloutPushAndServerQueue: a push deploy (`drover deploy` of a
// local host with DROVER_SERVER and DROVER_TOKEN set) and a server-run
// rollout of the same app and environment queue behind each other, both
// ways: the one that comes second waits (queued in `drover rollouts`) and
// starts its work only after the first ended.
func TestRolloutPushAndServerQueue(t *testing.T) {
	f := newRolloutFleet(t, rolloutOptions{})
	f.startV1()
	pushDir := filepath.Join(f.root, "push")
	pushTo := filepath.Join(pushDir, "srv")
	mustWrite(t, filepath.Join(pushDir, "drover.yml"), f.yml(f.fleet, "", pushTo))
	mustWrite(t, filepath.Join(pushTo, "shared", "port"), fmt.Sprintf("%d\n", apptest.FreePorts(t, 1)[0]))
	pushEvents := func() []event { return events(t, "push", pushTo) }
	t.Cleanup(func() { apptest.StopPIDs(filepath.Join(pushTo, "shared", "pids")) })
	waitExit := func(p *proc, what string) {
		t.Helper()
		select {
		case <-p.done:
		case <-time.After(bound):
			t.Fatalf("%s did not end within %s:\n%s", what, bound, tail(readFile(p.log), 3000))
		}
		if p.err != nil {
			t.Fatalf("%s: %v\n%s", what, p.err, tail(readFile(p.log), 3000))
		}
	}

	// The push deploy first: the server rollout waits for it.
	c2 := f.commitEnv("v2", "", map[string]string{"GATED": ""})
	push := f.startIn(pushDir, "push-first.log", "deploy", env)
	f.waitFor("the push deploy waits at its prepare gate", func() (bool, string) {
		_, err := os.Stat(filepath.Join(pushTo, "shared", "at-gate-"+c2))
		return err == nil, tail(readFile(push.log), 500)
	})
	pushRo := f.waitKind("push", "running")
	rc := f.create(c2)
	if rc.Rollout.State != "queued" {
		t.Errorf("a server rollout created while a push deploy holds the environment is %s, want queued", rc.Rollout.State)
	}
	f.writeGates(c2)
	mustWrite(t, filepath.Join(pushTo, "shared", "gate-"+c2), "")
	waitExit(push, "the first push deploy")
	ro := f.waitRollout(rc.Rollout.ID, bound)
	if ro.State != "succeeded" {
		t.Fatalf("server rollout after the push deploy: %s: %s", ro.State, ro.Error)
	}
	pushRo = f.rollout(pushRo.ID)
	if pushRo.State != "succeeded" || ro.StartedAt.Before(pushRo.EndedAt) {
		t.Errorf("push rollout %s ended %s; the server rollout started %s: want the push succeeded and the server rollout after it", pushRo.State, pushRo.EndedAt, ro.StartedAt)
	}
	pushAct := lastOf(t, pushEvents(), "activate", c2)
	for _, n := range f.nodes {
		if e := firstOf(t, nodeEvents(t, n), "prepare", c2); e.at.Before(pushAct.at) {
			t.Errorf("%s began preparing %s at %s, before the push deploy activated it at %s", n.name, c2[:7], e.at.Format(time.StampMicro), pushAct.at.Format(time.StampMicro))
		}
	}

	// The server rollout first: the push deploy waits for it.
	c3 := f.commitEnv("v3", "", map[string]string{"GATED": ""})
	rc3 := f.create(c3)
	for _, n := range f.nodes {
		f.atGate(n, c3)
	}
	push = f.startIn(pushDir, "push-second.log", "deploy", env)
	queued := f.waitKind("push", "queued")
	mustWrite(t, filepath.Join(pushTo, "shared", "gate-"+c3), "")
	f.writeGates(c3)
	ro3 := f.waitRollout(rc3.Rollout.ID, bound)
	if ro3.State != "succeeded" {
		t.Fatalf("server rollout: %s: %s", ro3.State, ro3.Error)
	}
	waitExit(push, "the second push deploy")
	pushRo = f.rollout(queued.ID)
	if pushRo.State != "succeeded" || pushRo.StartedAt.Before(ro3.EndedAt) {
		t.Errorf("push rollout %s started %s; the server rollout ended %s: want the push after it", pushRo.State, pushRo.StartedAt, ro3.EndedAt)
	}
	if out := readFile(push.log); !strings.Contains(out, "queue") {
		t.Errorf("the queued push deploy did not say it waited in the queue:\n%s", tail(out, 2000))
	}
	pushPrep := firstOf(t, pushEvents(), "prepare", c3)
	for _, n := range f.nodes {
		if e := lastOf(t, nodeEvents(t, n), "activate", c3); !pushPrep.at.After(e.at) {
			t.Errorf("the push deploy began preparing %s at %s, before %s activated it at %s", c3[:7], pushPrep.at.Format(time.StampMicro), n.name, e.at.Format(time.StampMicro))
		}
	}
}

// decode unmarshals JSON output of what, failing the test when it cannot.
func decode[T any](t testing.TB, what, out string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, out)
	}
	return v
}

// waitKind waits until `drover rollouts` lists a rollout of kind in state
// and returns the newest such.
func (r *rolloutFleet) waitKind(kind, state string) api.Rollout {
	r.t.Helper()
	var found api.Rollout
	r.waitFor(fmt.Sprintf("a %s rollout %s in `drover rollouts`", kind, state), func() (bool, string) {
		list := r.rollouts()
		for _, ro := range list {
			if ro.Kind == kind && ro.State == state && ro.ID > found.ID {
				found = ro
			}
		}
		return found.ID != 0, fmt.Sprintf("%+v", list)
	})
	return found
}

// firstOf and lastOf are the earliest and latest events of kind for
// commit; they fail the test when there is none.
func firstOf(t testing.TB, evs []event, kind, commit string) event {
	t.Helper()
	return pick(t, evs, kind, commit, false)
}

func lastOf(t testing.TB, evs []event, kind, commit string) event {
	t.Helper()
	return pick(t, evs, kind, commit, true)
}

func pick(t testing.TB, evs []event, kind, commit string, last bool) event {
	t.Helper()
	var out event
	for _, e := range evs {
		if e.kind != kind || e.commit != commit {
			continue
		}
		if out.at.IsZero() || (last && e.at.After(out.at)) || (!last && e.at.Before(out.at)) {
			out = e
		}
	}
	if out.at.IsZero() {
		t.Fatalf("no %s event of %s in %+v", kind, commit[:7], evs)
	}
	return out
}
