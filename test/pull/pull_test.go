//go:build integration

package pull

import (
	"context"
	"encoding/json"
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
	m := map[string]api.Upgrade{}
	for _, u := range list { // newest first
		if _, ok := m[u.Node]; !ok {
			m[u.Node] = u
		}
	}
	return m
}

// TestPullServerKilledMidUpgrade: the server dies (SIGKILL) while every
// node is in prepare. The nodes keep serving their release, finish the
// upgrade without the server, and report it once the server is back on
// the same data; then a new release still reaches them.
func TestPullServerKilledMidUpgrade(t *testing.T) {
	f := newFleet(t)
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
		f.waitFor(n.name+" finishes the upgrade without the server", func() (bool, string) {
			a, s := active(n), serving(n)
			return a == id2 && s == id2, "current " + a + ", serving " + s
		})
	}
	f.startServer()
	start := time.Now()
	f.waitAll(rel2)
	t.Logf("reports arrived %s after the server restarted", time.Since(start).Round(time.Millisecond))
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
// node keeps serving the old release and status says so; restarted, the
// agent takes the upgrade up again and the node converges. `current`
// always points at a complete release on every node, and no stray
// release directory is left.
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
		f.waitNode(n, rel2)
	}
	if a, s := active(victim), serving(victim); a != id1 || s != id1 {
		t.Fatalf("%s with its agent dead: current %s, serving %s; want %s", victim.name, a, s, id1)
	}
	st := f.status()[victim.name]
	if st.Release != id1 || st.Target != rel2.ID || st.Status == api.StatusSucceeded || st.Status == api.StatusFailed {
		t.Errorf("status of %s with its agent dead mid-prepare = %+v; want release %s, an unfinished upgrade to %d", victim.name, st, id1, rel2.ID)
	}

	f.startAgent(victim)
	f.atGate(victim, c2)
	openGate(t, victim, c2)
	f.waitNode(victim, rel2)
	if bad := stop(); len(bad) > 0 {
		t.Errorf("current pointed at an incomplete release:\n%s", strings.Join(bad, "\n"))
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

// TestPullOnceExitCodes: `drover agent --once` exits 0 when there is
// nothing to do or it upgraded, and 1 when the upgrade failed (a failing
// prepare hook), leaving the running release in place.
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
	once(0, "upgraded 0, failed 0") // no release yet
	rel1 := f.createRelease("v1")
	once(0, "upgraded 1, failed 0")
	f.waitNode(n, rel1)
	once(0, "upgraded 0, failed 0") // up to date

	f.commit("broken", map[string]string{"FAIL": "x"})
	rel2 := f.createRelease("broken")
	once(1, "upgraded 0, failed 1")
	id1 := releaseID(rel1)
	if a, s := active(n), serving(n); a != id1 || s != id1 {
		t.Fatalf("after a failed upgrade: current %s, serving %s; want %s", a, s, id1)
	}
	st := f.status()[n.name]
	if st.Status != api.StatusFailed || st.Target != rel2.ID || st.Release != id1 || !strings.Contains(st.Error, "exited with code 1") {
		t.Errorf("status after the failed upgrade = %+v", st)
	}

	f.commit("fixed", map[string]string{"FAIL": "\x00delete"})
	rel3 := f.createRelease("fixed")
	once(0, "upgraded 1, failed 0")
	f.waitNode(n, rel3)
}

// TestPullFirstAgentResolves: a release created where the repository
// cannot be read (no --repo, no drover.yml) is resolved by the first agent
// that sees it; the branch then moves, and the other nodes still deploy
// the first agent's commit.
func TestPullFirstAgentResolves(t *testing.T) {
	f := newFleet(t)
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
	if r := f.drover("agent", "--config", first.config, "--once"); r.code != 0 {
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
	f.startAgent(f.nodes[1])
	f.startAgent(f.nodes[2])
	rel.Commit = c1
	f.waitAll(rel)
	for _, n := range f.nodes {
		if _, err := os.Stat(filepath.Join(n.deployTo, "releases", releaseID(api.Release{CreatedAt: rel.CreatedAt, Commit: c2}))); err == nil {
			t.Errorf("%s prepared the moved branch's commit %s", n.name, c2[:7])
		}
	}
}

// TestPullAgentStopFinishesUpgrade sends an agent SIGTERM (systemd's stop)
// while it waits in a prepare hook: it does not abandon the upgrade
// halfway; once the hook can go on, the node reaches the release, the
// upgrade is reported, and only then does the agent exit.
func TestPullAgentStopFinishesUpgrade(t *testing.T) {
	f := newFleet(t)
	f.startAgents()
	rel1 := f.createRelease("v1")
	f.waitAll(rel1)
	c2 := f.commit("v2", map[string]string{"GATED": ""})
	rel2 := f.createRelease("v2")
	n := f.nodes[0]
	f.atGate(n, c2)
	if err := n.agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Stopping does not cut the upgrade short: the agent is still there,
	// waiting in the hook.
	select {
	case <-n.agent.done:
		t.Fatalf("the agent exited mid-upgrade on SIGTERM:\n%s", tail(readFile(n.agent.log), 2000))
	case <-time.After(time.Second):
	}
	openGate(t, n, c2)
	select {
	case <-n.agent.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the agent did not exit after finishing its upgrade")
	}
	if got := active(n); got != releaseID(rel2) {
		t.Fatalf("after a stop mid-upgrade current = %s, want %s", got, releaseID(rel2))
	}
	if st := f.status()[n.name]; st.Status != api.StatusSucceeded || st.Target != rel2.ID {
		t.Errorf("status after the stop: %+v", st)
	}
}
