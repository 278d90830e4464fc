package agent

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/drover/drover/internal/source"
	"github.com/drover/drover/internal/testenv/gitrepo"
)

// TestVerifyCommit checks a release's commit against its spec in a mirror
// of a real repository: a branch that moved on still holds its older
// commits, a tag that moved no longer vouches for the old one, and a
// commit on no branch of the spec is refused.
func TestVerifyCommit(t *testing.T) {
	repo := gitrepo.New(t)
	c1 := repo.Commit("one", map[string]string{"a": "1"})
	repo.Git("tag", "v1")
	repo.Git("checkout", "--quiet", "-b", "side")
	side := repo.Commit("side", map[string]string{"b": "1"})
	repo.Git("checkout", "--quiet", "main")
	c2 := repo.Commit("two", map[string]string{"a": "2"})
	mirror := &source.Mirror{Dir: filepath.Join(t.TempDir(), "repo"), URL: repo.Dir}
	ctx := context.Background()

	check := func(spec, commit string, ok bool) {
		t.Helper()
		err := verifyCommit(ctx, mirror, spec, commit)
		if ok && err != nil || !ok && !errors.Is(err, ErrWrongCommit) {
			t.Errorf("%s at %s: err = %v, want ok=%v", spec, commit[:min(7, len(commit))], err, ok)
		}
	}
	check("branch:main", c2, true)
	check("branch:main", c1, true) // the branch moved on
	check("branch:main", side, false)
	check("branch:side", side, true)
	check("tag:v1", c1, true)
	check("tag:v1", c2, false)
	check("commit:"+c1[:8], c1, true)
	check("commit:"+c1[:8], c2, false)
	check("commit:"+c1[:8], c1[:12], false) // not a full commit
	check("branch:gone", c1, false)

	// The tag moves: a commit the mirror cannot confirm makes it fetch,
	// and from then on the old commit is refused.
	repo.Git("tag", "--force", "v1", c2)
	check("tag:v1", c2, true)
	check("tag:v1", c1, false)
}
