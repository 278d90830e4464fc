//go:build integration

package pull

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
)

// loudHooks are prepare hooks that print more than the server takes in one
// request: one 1.2 MB line, then twenty steps of 100 kB each in long lines.
func loudHooks() string {
	var b strings.Builder
	b.WriteString("  oneline:\n    when: prepare\n    commands:\n      - head -c 1200000 /dev/zero | tr '\\0' x; echo; echo oneline-done\n")
	for i := range 20 {
		fmt.Fprintf(&b, "  loud%02d:\n    when: prepare\n    commands:\n      - i=0; while [ $i -lt 200 ]; do printf 'loud%02d line %%04d %%0480d\\n' $i 0; i=$((i+1)); done; echo loud%02d-done\n", i, i, i)
	}
	return b.String()
}

// TestPullLoudHookKeepsPolling: a release whose hooks print a 1.2 MB line
// and twenty steps of long lines is deployed and reported (each line and
// each report bounded, the end of each step kept), the daemon goes on
// polling and takes the next release, and `agent --once` on the same loud
// release exits.
func TestPullLoudHookKeepsPolling(t *testing.T) {
	f := newFleet(t)
	quiet := readFile(f.repo.Dir + "/drover.yml")
	loud := strings.Replace(quiet, "hooks:\n", "hooks:\n"+loudHooks(), 1)
	f.commit("loud", map[string]string{"drover.yml": loud})
	n := f.nodes[0]
	f.startAgent(n)
	rel1 := f.createRelease("loud")
	f.waitNode(n, rel1)

	// The loud steps are on the upgrade of the rollout's prepare task.
	var u api.Upgrade
	for _, up := range f.allUpgrades() {
		if up.Node == n.name && up.ReleaseID == rel1.ID && slices.ContainsFunc(up.Steps, func(s api.Step) bool { return s.Name == "hook:oneline" }) {
			u = up
		}
	}
	loudSteps := 0
	for _, s := range u.Steps {
		switch {
		case s.Name == "hook:oneline":
			// The host cuts the line at release.MaxLine, the agent's report
			// at its own bound: one marker at least, the end kept.
			if !strings.Contains(s.Log, "… [truncated ") || !strings.HasSuffix(s.Log, "oneline-done\n") || len(s.Log) > 64<<10 {
				t.Errorf("the 1.2 MB line's step log (%d bytes) is not cut with a marker and its end kept:\n%s", len(s.Log), tail(s.Log, 500))
			}
		case strings.HasPrefix(s.Name, "hook:loud"):
			loudSteps++
			if !strings.HasPrefix(s.Log, "… [truncated ") || !strings.HasSuffix(s.Log, strings.TrimPrefix(s.Name, "hook:")+"-done\n") {
				t.Errorf("step %s: %d bytes, want the marker and its last lines:\n%s\n...\n%s", s.Name, len(s.Log), s.Log[:min(len(s.Log), 200)], tail(s.Log, 200))
			}
		}
	}
	if loudSteps != 20 {
		t.Errorf("the server has %d of the 20 loud steps", loudSteps)
	}

	// --once on the loud release (a node outside the rollout converging
	// to the environment's last completed release) exits and reports it.
	f.waitRolloutEnd(rel1)
	m := f.nodes[1]
	start := time.Now()
	r := f.drover("agent", "--config", m.config, "--once")
	if r.code != 0 || !strings.Contains(r.stdout, "upgraded 1, failed 0") {
		t.Fatalf("agent --once: exit %d after %s\n%s%s", r.code, time.Since(start), r.stdout, r.stderr)
	}
	f.waitNode(m, rel1)

	// The daemon still follows the server (m, now registered, takes part
	// in the next rollout with its own daemon).
	f.startAgent(m)
	f.commit("quiet", map[string]string{"drover.yml": quiet})
	rel2 := f.createRelease("quiet again")
	f.waitNode(n, rel2)
	f.waitNode(m, rel2)
}

// TestPullOnceExitsWhenServerGone: the server dies while `agent --once`
// is in the prepare hook of its rollout task. The node finishes the task,
// and --once gives up reporting it within its bound and exits instead of
// retrying forever.
func TestPullOnceExitsWhenServerGone(t *testing.T) {
	f := newFleet(t)
	n := f.nodes[0]
	if r := f.drover("agent", "--config", n.config, "--once"); r.code != 0 { // the node joins
		t.Fatalf("agent --once: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	c1 := f.commit("gated", map[string]string{"GATED": ""})
	rel := f.createRelease("gated")
	f.waitTask(rel, n, "prepare")
	once := f.start(n.name+"-once.log", "agent", "--config", n.config, "--once")
	f.atGate(n, c1)
	f.server.kill(t)
	openGate(t, n, c1)
	start := time.Now()
	select {
	case <-once.done:
	case <-time.After(90 * time.Second):
		t.Fatalf("agent --once still running %s after the upgrade could not be reported:\n%s", time.Since(start).Round(time.Second), tail(readFile(once.log), 2000))
	}
	t.Logf("agent --once exited %s after the gate opened: %v", time.Since(start).Round(time.Millisecond), once.err)
	if !prepared(n, releaseID(rel)) {
		t.Errorf("%s is not prepared after the task", releaseID(rel))
	}
	if log := readFile(once.log); !strings.Contains(log, "gave up reporting the upgrade") || !strings.Contains(log, "upgraded 1, failed 0") {
		t.Errorf("agent --once did not say it gave up reporting, or did not count the upgrade:\n%s", tail(log, 2000))
	}
}
