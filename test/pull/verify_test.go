//go:build integration

package pull

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
)

// TestPullAgentRefusesWrongCommit: another node's token sets the commit of
// an unresolved release to a commit the spec does not name (a commit on a
// side branch, for tag:v1, branch:main and commit:<v1>). The agent, on its
// rollout's prepare task, checks the spec against its own mirror of the
// repository, refuses with an error naming both commits, deploys nothing,
// and reports the upgrade failed; the rollout fails.
func TestPullAgentRefusesWrongCommit(t *testing.T) {
	f := newFleet(t)
	v1 := f.repo.Head()
	f.repo.Git("tag", "v1")
	f.repo.Git("checkout", "--quiet", "-b", "side")
	evil := f.commit("side", map[string]string{"EVIL": "x"})
	f.repo.Git("checkout", "--quiet", "main")
	f.commit("v2", nil)

	// Both nodes join; the other one's token is taken.
	other, n := f.nodes[1], f.nodes[0]
	for _, m := range []*node{n, other} {
		if r := f.drover("agent", "--config", m.config, "--once"); r.code != 0 {
			t.Fatalf("%s agent --once: exit %d\n%s%s", m.name, r.code, r.stdout, r.stderr)
		}
	}
	tok, err := os.ReadFile(filepath.Join(other.dir, "state", "node.token"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := api.NewClient(f.url, strings.TrimSpace(string(tok)), "")
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ spec, says string }{
		{"tag:v1", "tag v1 is " + v1},
		{"branch:main", "is not on branch main"},
		{"commit:" + v1[:10], "does not match commit:" + v1[:10]},
	} {
		var rel api.Release
		out := f.mustDrover("release", "create", app, env, tc.spec, "-o", "json")
		if err := json.Unmarshal([]byte(out), &rel); err != nil || rel.Commit != "" {
			t.Fatalf("release create %s: %v, commit %q (want unresolved)\n%s", tc.spec, err, rel.Commit, out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		got, err := c.Resolve(ctx, rel.ID, evil)
		cancel()
		if err != nil || got != evil {
			t.Fatalf("resolve %s to the side commit with another node's token: %q, %v", tc.spec, got, err)
		}

		f.waitTask(rel, n, "prepare")
		r := f.drover("agent", "--config", n.config, "--once")
		if r.code != 1 || !strings.Contains(r.stdout, "upgraded 0, failed 1") || !strings.Contains(r.stderr, evil) || !strings.Contains(r.stderr, tc.says) {
			t.Fatalf("%s resolved to %s: agent --once exit %d, want 1 with an error naming %s and saying %q\n%s%s", tc.spec, evil[:7], r.code, evil[:7], tc.says, r.stdout, r.stderr)
		}
		if entries, _ := os.ReadDir(filepath.Join(n.deployTo, "releases")); len(entries) != 0 || active(n) != "" {
			t.Fatalf("%s: something was deployed: current %q, releases %v", tc.spec, active(n), entries)
		}
		st := f.status()[n.name]
		if st.Status != api.StatusFailed || st.Target != rel.ID || !strings.Contains(st.Error, tc.says) {
			t.Errorf("%s: status %+v, want failed saying %q", tc.spec, st, tc.says)
		}
		t.Logf("%s: %s", tc.spec, st.Error)
		// The other node ends its own task (refused too, or called off
		// with the failed rollout) so that the next release's rollout runs.
		f.drover("agent", "--config", other.config, "--once")
		if ro := f.waitRolloutEnd(rel); ro.State != "failed" {
			t.Errorf("%s: rollout %s, want failed", tc.spec, ro.State)
		}
	}
}
