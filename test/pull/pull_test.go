//go:build integration

package pull

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
)

// TestPullUpgradeAll: `release create` moves all three agents to the
// release (current, the running service, status succeeded with a fresh
// last_seen and every step ok), and a second release reaches the running
// daemons through the long-poll, well inside one poll period, without a
// restart.
func TestPullUpgradeAll(t *testing.T) {
	f := newFleet(t)
	f.startAgents()
	start := time.Now()
	rel1 := f.createRelease("v1")
	f.waitAll(rel1)
	t.Logf("first release on 3 nodes in %s", time.Since(start).Round(time.Millisecond))

	st := f.status()
	if len(st) != 3 {
		t.Fatalf("status has %d nodes, want 3: %+v", len(st), st)
	}
	for _, n := range f.nodes {
		s := st[n.name]
		if s.LastSeen.IsZero() || time.Since(s.LastSeen) > time.Minute || s.Stale {
			t.Errorf("%s: last_seen %s stale %v, want recent", n.name, s.LastSeen, s.Stale)
		}
		if s.App != app || s.Env != env || !slices.Equal(s.Roles, []string{"web"}) || s.Agent == "" {
			t.Errorf("%s: status %+v", n.name, s)
		}
	}
	// Every step of every upgrade was reported, and all ended ok.
	ups := f.upgrades()
	for _, n := range f.nodes {
		u, ok := ups[n.name]
		if !ok || len(u.Steps) == 0 {
			t.Fatalf("%s: no upgrade with steps: %+v", n.name, u)
		}
		for _, s := range u.Steps {
			if s.Status != "ok" {
				t.Errorf("%s: step %s is %s", n.name, s.Name, s.Status)
			}
		}
	}

	pids := map[string]int{}
	for _, n := range f.nodes {
		pids[n.name] = n.agent.cmd.Process.Pid
	}
	f.commit("v2", nil)
	start = time.Now()
	rel2 := f.createRelease("v2")
	// Every node starts the upgrade within a few seconds: the long-poll
	// (30 s) woke, nobody waited for its end.
	f.waitFor("every node started upgrading to release 2", func() (bool, string) {
		for name, s := range f.status() {
			if s.Target != rel2.ID {
				return false, name + " still targets an older release"
			}
		}
		return true, ""
	})
	woke := time.Since(start)
	f.waitAll(rel2)
	t.Logf("second release: every node started in %s, all done in %s", woke.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if woke > 10*time.Second {
		t.Errorf("nodes took %s to start the second release; the long-poll did not wake", woke)
	}
	for _, n := range f.nodes {
		if !n.agent.alive() || n.agent.cmd.Process.Pid != pids[n.name] || n.starts != 1 {
			t.Errorf("%s: the agent restarted", n.name)
		}
	}
}

// upgrades is the newest upgrade of each node, with its steps.
func (f *fleet) upgrades() map[string]api.Upgrade {
	m := map[string]api.Upgrade{}
	for _, u := range f.allUpgrades() { // newest first
		if _, ok := m[u.Node]; !ok {
			m[u.Node] = u
		}
	}
	return m
}

// allUpgrades is every upgrade of the environment, newest first, with
// their steps.
func (f *fleet) allUpgrades() []api.Upgrade {
	f.t.Helper()
	tok, err := os.ReadFile(filepath.Join(f.data, "admin.token"))
	if err != nil {
		f.t.Fatal(err)
	}
	c, err := api.NewClient(f.url, strings.TrimSpace(string(tok)), "")
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := c.Upgrades(ctx, app, env)
	if err != nil {
		f.t.Fatal(err)
	}
	return list
}

// TestPullServerKilledMidUpgrade: the server dies (SIGKILL) while every
// node prepares a release. The nodes keep serving their release, finish
// their prepare task without the server, and report it once the server is
// back on the same data; the restarted server takes the rollout over when
// the dead one's lease lapses and finishes it; then a new release still
// reaches the same agents.
func TestPullServerKilledMidUpgrade(t *testing.T) {
	f := newFleetWith(t, fleetOptions{serverArgs: []string{"--deploy-lease", "5s"}})
	f.startAgents()
	rel1 := f.createRelease("v1")
	f.waitAll(rel1)
	id1 := releaseID(rel1)

	c2 := f.commit("v2", map[string]string{"GATED": ""})
	rel2 := f.createRelease("v2")
	id2 := releaseID(rel2)
	for _, n := range f.nodes {
		f.atGate(n, c2)
	}
	f.server.kill(t)
	for _, n := range f.nodes {
		if a, s := active(n), serving(n); a != id1 || s != id1 {
			t.Fatalf("%s with the server gone: current %s, serving %s; want %s", n.name, a, s, id1)
		}
		openGate(t, n, c2)
	}
	for _, n := range f.nodes {
		f.waitFor(n.name+" finishes its prepare task without the server", func() (bool, string) {
			return prepared(n, id2), "not prepared"
		})
		// Prepared only: activating is the rollout's next task, which
		// needs the server.
		if a, s := active(n), serving(n); a != id1 || s != id1 {
			t.Fatalf("%s prepared without the server: current %s, serving %s; want %s", n.name, a, s, id1)
		}
	}
	f.startServer()
	start := time.Now()
	f.waitAll(rel2)
	t.Logf("the restarted server finished the rollout %s after it started", time.Since(start).Round(time.Millisecond))
	if ro := f.waitRolloutEnd(rel2); ro.State != "succeeded" {
		t.Errorf("rollout of release 2 after the restart: %s %s", ro.State, ro.Error)
	}
	for _, n := range f.nodes {
		if n.starts != 1 || !n.agent.alive() {
			t.Errorf("%s: the agent restarted or died", n.name)
		}
	}

	// The agents follow the restarted server.
	f.commit("v3", map[string]string{"GATED": "\x00delete"})
	f.waitAll(f.createRelease("v3"))
}

// TestPullAgentKilledMidPrepare: an agent dies (SIGKILL) in prepare. Its
// node keeps serving the old release and status says so; the rollout waits
// for it at the barrier (no node activates); restarted, the agent takes
// the prepare task up again and the rollout goes on to every node.
// `current` always points at a complete release on every node, and no
// stray release directory is left.
func TestPullAgentKilledMidPrepare(t *testing.T) {
	f := newFleet(t)
	f.startAgents()
	rel1 := f.createRelease("v1")
	f.waitAll(rel1)
	id1 := releaseID(rel1)
	stop := f.invariants()

	c2 := f.commit("v2", map[string]string{"GATED": ""})
	rel2 := f.createRelease("v2")
	id2 := releaseID(rel2)
	for _, n := range f.nodes {
		f.atGate(n, c2)
	}
	victim := f.nodes[1]
	victim.agent.kill(t)
	if err := os.Remove(victim.shared("at-gate-" + c2)); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*node{f.nodes[0], f.nodes[2]} {
		openGate(t, n, c2)
		f.waitFor(n.name+" prepared", func() (bool, string) { return prepared(n, id2), "not prepared" })
	}
	// The barrier holds: the others' prepare tasks are done and reported,
	// and nobody activates while the victim has not prepared.
	f.waitFor("the others' prepare tasks are reported done", func() (bool, string) {
		ro, _ := f.rolloutOf(rel2)
		for _, n := range []*node{f.nodes[0], f.nodes[2]} {
			if rn, ok := taskOf(ro, n); !ok || rn.Action != "prepare" || rn.State != "done" {
				return false, fmt.Sprintf("%+v", ro.Nodes)
			}
		}
		return true, ""
	})
	for _, n := range f.nodes {
		if a, s := active(n), serving(n); a != id1 || s != id1 {
			t.Fatalf("%s with %s's agent dead mid-prepare: current %s, serving %s; want %s", n.name, victim.name, a, s, id1)
		}
	}
	st := f.status()[victim.name]
	if st.Release != id1 || st.Target != rel2.ID || st.Status == api.StatusSucceeded || st.Status == api.StatusFailed {
		t.Errorf("status of %s with its agent dead mid-prepare = %+v; want release %s, an unfinished upgrade to %d", victim.name, st, id1, rel2.ID)
	}

	f.startAgent(victim)
	f.atGate(victim, c2)
	openGate(t, victim, c2)
	f.waitAll(rel2)
	if ro := f.waitRolloutEnd(rel2); ro.State != "succeeded" {
		t.Errorf("rollout: %s %s", ro.State, ro.Error)
	}
	if bad := stop(); len(bad) > 0 {
		t.Errorf("current pointed at an incomplete release:\n%s", strings.Join(bad, "\n"))
	}
	// The barrier: no node activated before the victim had prepared.
	vr, _, err := engineRecord(victim, id2)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range f.nodes {
		r, _, err := engineRecord(n, id2)
		if err != nil {
			t.Fatal(err)
		}
		if !r.ActivatedAt.After(vr.PreparedAt) {
			t.Errorf("%s activated %s at %s, before %s had prepared it (%s)", n.name, id2, r.ActivatedAt.Format(time.RFC3339Nano), victim.name, vr.PreparedAt.Format(time.RFC3339Nano))
		}
	}
	for _, n := range f.nodes {
		entries, err := os.ReadDir(filepath.Join(n.deployTo, "releases"))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		want := []string{id1, id2}
		slices.Sort(want)
		if !slices.Equal(names, want) {
			t.Errorf("%s: releases/ holds %v, want %v", n.name, names, want)
		}
	}
	// Status is consistent: every node's newest upgrade succeeded.
	for name, u := range f.upgrades() {
		if u.Status != api.StatusSucceeded || u.ReleaseID != rel2.ID {
			t.Errorf("%s: newest upgrade %+v", name, u)
		}
	}
}

// TestPullOnceExitCodes: `drover agent --once` does one rollout task per
// run; it exits 0 when there is nothing to do or its task succeeded
// (prepare, then activate), and 1 when the task failed (a failing prepare
// hook), leaving the running release in place.
func TestPullOnceExitCodes(t *testing.T) {
	f := newFleet(t)
	n := f.nodes[0]
	once := func(want int, wantOut string) {
		t.Helper()
		r := f.drover("agent", "--config", n.config, "--once")
		if r.code != want || !strings.Contains(r.stdout, wantOut) {
			t.Fatalf("agent --once: exit %d, want %d with %q\n%s%s", r.code, want, wantOut, r.stdout, r.stderr)
		}
	}
	// upTo runs the two tasks of rel's all-at-once rollout.
	upTo := func(rel api.Release) {
		t.Helper()
		f.waitTask(rel, n, "prepare")
		once(0, "upgraded 1, failed 0")
		if a := active(n); a == releaseID(rel) {
			t.Fatalf("the prepare task activated %s", a)
		}
		f.waitTask(rel, n, "activate")
		once(0, "upgraded 1, failed 0")
		f.waitNode(n, rel)
	}
	once(0, "upgraded 0, failed 0") // no release yet; the node joins
	rel1 := f.createRelease("v1")
	upTo(rel1)
	f.waitRolloutEnd(rel1)
	once(0, "upgraded 0, failed 0") // up to date

	f.commit("broken", map[string]string{"FAIL": "x"})
	rel2 := f.createRelease("broken")
	f.waitTask(rel2, n, "prepare")
	once(1, "upgraded 0, failed 1")
	id1 := releaseID(rel1)
	if a, s := active(n), serving(n); a != id1 || s != id1 {
		t.Fatalf("after a failed upgrade: current %s, serving %s; want %s", a, s, id1)
	}
	st := f.status()[n.name]
	if st.Status != api.StatusFailed || st.Target != rel2.ID || st.Release != id1 || !strings.Contains(st.Error, "exited with code 1") {
		t.Errorf("status after the failed upgrade = %+v", st)
	}
	if ro := f.waitRolloutEnd(rel2); ro.State != "failed" {
		t.Errorf("rollout of the broken release: %s, want failed", ro.State)
	}
	once(0, "upgraded 0, failed 0") // back on the last completed release

	f.commit("fixed", map[string]string{"FAIL": "\x00delete"})
	upTo(f.createRelease("fixed"))
}

// TestPullFirstAgentResolves: a release created where the repository
// cannot be read (no --repo, no drover.yml) is resolved by the first agent
// that takes up its rollout task; the branch then moves, and the other
// nodes still deploy the first agent's commit.
func TestPullFirstAgentResolves(t *testing.T) {
	f := newFleet(t)
	for _, n := range f.nodes { // the nodes join
		if r := f.drover("agent", "--config", n.config, "--once"); r.code != 0 {
			t.Fatalf("%s agent --once: exit %d\n%s%s", n.name, r.code, r.stdout, r.stderr)
		}
	}
	c1 := f.repo.Head()
	var rel api.Release
	out := f.mustDrover("release", "create", app, env, "branch:main", "-o", "json")
	if err := json.Unmarshal([]byte(out), &rel); err != nil {
		t.Fatalf("release create -o json: %v\n%s", err, out)
	}
	if rel.Commit != "" {
		t.Fatalf("release create resolved %s without a repository", rel.Commit)
	}
	first := f.nodes[0]
	f.waitTask(rel, first, "prepare")
	if r := f.drover("agent", "--config", first.config, "--once"); r.code != 0 || !strings.Contains(r.stdout, "upgraded 1, failed 0") {
		t.Fatalf("first agent --once: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	var rels []api.Release
	if err := json.Unmarshal([]byte(f.mustDrover("release", "list", app, env, "-o", "json")), &rels); err != nil {
		t.Fatal(err)
	}
	if len(rels) != 1 || rels[0].Commit != c1 {
		t.Fatalf("after the first agent: releases %+v, want commit %s", rels, c1)
	}

	c2 := f.commit("moved", nil) // the branch moves on
	f.startAgents()
	rel.Commit = c1
	f.waitAll(rel)
	for _, n := range f.nodes {
		if _, err := os.Stat(filepath.Join(n.deployTo, "releases", releaseID(api.Release{CreatedAt: rel.CreatedAt, Commit: c2}))); err == nil {
			t.Errorf("%s prepared the moved branch's commit %s", n.name, c2[:7])
		}
	}
}

// TestPullAgentStopFinishesUpgrade sends an agent SIGTERM (systemd's stop)
// while it waits in a prepare hook: it does not abandon its task halfway;
// once the hook can go on, the release is prepared, the task is reported
// done, and only then does the agent exit (without starting the next
// task). Started again, it takes the rollout's next task and the node
// reaches the release.
func TestPullAgentStopFinishesUpgrade(t *testing.T) {
	f := newFleet(t)
	f.startAgents()
	rel1 := f.createRelease("v1")
	f.waitAll(rel1)
	c2 := f.commit("v2", map[string]string{"GATED": ""})
	rel2 := f.createRelease("v2")
	id1, id2 := releaseID(rel1), releaseID(rel2)
	n := f.nodes[0]
	f.atGate(n, c2)
	if err := n.agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Stopping does not cut the task short: the agent is still there,
	// waiting in the hook.
	select {
	case <-n.agent.done:
		t.Fatalf("the agent exited mid-upgrade on SIGTERM:\n%s", tail(readFile(n.agent.log), 2000))
	case <-time.After(time.Second):
	}
	for _, m := range f.nodes {
		openGate(t, m, c2)
	}
	select {
	case <-n.agent.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the agent did not exit after finishing its task")
	}
	if !prepared(n, id2) || active(n) != id1 {
		t.Fatalf("after a stop mid-prepare: prepared %v, current %s; want %s prepared, %s current", prepared(n, id2), active(n), id2, id1)
	}
	// Reported before the agent exited: its prepare task is done, or the
	// barrier, which needs that report, already passed and its activate
	// task waits for it (the stopped agent cannot have taken it).
	ro, _ := f.rolloutOf(rel2)
	if rn, _ := taskOf(ro, n); (rn.Action != "prepare" || rn.State != "done") && (rn.Action != "activate" || rn.State != "assigned") {
		t.Errorf("%s's task after the stop: %+v, want prepare done or activate assigned", n.name, rn)
	}
	f.startAgent(n)
	f.waitAll(rel2)
	if st := f.status()[n.name]; st.Status != api.StatusSucceeded || st.Target != rel2.ID {
		t.Errorf("status after the restart: %+v", st)
	}
}

// rolloutOf is the server rollout of rel as `drover rollouts` shows it
// (ok false while it is not listed).
func (f *fleet) rolloutOf(rel api.Release) (api.Rollout, bool) {
	f.t.Helper()
	out := f.mustDrover("rollouts", app, env, "-o", "json")
	var list []api.Rollout
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		f.t.Fatalf("rollouts -o json: %v\n%s", err, out)
	}
	for _, ro := range list {
		if ro.Kind == "server" && ro.ReleaseID == rel.ID {
			return ro, true
		}
	}
	return api.Rollout{}, false
}

// taskOf is n's task in rollout ro (ok false when it has none).
func taskOf(ro api.Rollout, n *node) (api.RolloutNode, bool) {
	for _, rn := range ro.Nodes {
		if rn.Node == n.name {
			return rn, true
		}
	}
	return api.RolloutNode{}, false
}

// waitTask waits until rel's rollout asks n for action (prepare or
// activate) and n has not taken it up yet: an `agent --once` run now
// does that task.
func (f *fleet) waitTask(rel api.Release, n *node, action string) {
	f.t.Helper()
	f.waitFor(fmt.Sprintf("release %d's rollout asks %s to %s", rel.ID, n.name, action), func() (bool, string) {
		ro, ok := f.rolloutOf(rel)
		if !ok {
			return false, "no rollout"
		}
		rn, ok := taskOf(ro, n)
		return ok && rn.Action == action && rn.State == "assigned", fmt.Sprintf("rollout %d %s: %+v", ro.ID, ro.State, ro.Nodes)
	})
}

// waitRolloutEnd waits until rel's rollout ended and returns it.
func (f *fleet) waitRolloutEnd(rel api.Release) api.Rollout {
	f.t.Helper()
	var ro api.Rollout
	f.waitFor(fmt.Sprintf("release %d's rollout ends", rel.ID), func() (bool, string) {
		var ok bool
		ro, ok = f.rolloutOf(rel)
		return ok && ended(ro.State), fmt.Sprintf("%+v", ro)
	})
	return ro
}

// prepared reports whether n's engine recorded release id as prepared.
func prepared(n *node, id string) bool {
	r, _, err := engineRecord(n, id)
	return err == nil && !r.PreparedAt.IsZero()
}

// releaseRecord is what a node's engine records of a release.
type releaseRecord struct {
	ID          string    `json:"id"`
	PreparedAt  time.Time `json:"prepared_at"`
	ActivatedAt time.Time `json:"activated_at"`
}

// engineRecord is n's engine record of release id, and whether its
// release history has id at all.
func engineRecord(n *node, id string) (releaseRecord, bool, error) {
	var st struct {
		Releases []releaseRecord `json:"releases"`
	}
	b, err := os.ReadFile(filepath.Join(n.deployTo, ".drover", "releases.json"))
	if err != nil {
		return releaseRecord{}, false, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return releaseRecord{}, false, fmt.Errorf("%s: %w", n.name, err)
	}
	for _, r := range st.Releases {
		if r.ID == id {
			return r, true, nil
		}
	}
	return releaseRecord{}, false, nil
}
