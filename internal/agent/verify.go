package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/drover/drover/internal/source"
)

// ErrWrongCommit is wrapped when a release's commit is not what its spec
// names in this node's own mirror of the repository.
var ErrWrongCommit = errors.New("the release's commit does not match its spec")

// verifyCommit checks, before anything is deployed, that commit is what
// the release's spec names: a commit: spec must be a prefix of it; in this
// node's own mirror of the repository a tag must point at it and a branch
// must contain it (the branch may have moved on since the release). The
// server's word alone is not enough: the first node to see a release
// resolves it for every node. The mirror is fetched only when what it
// holds does not already confirm the commit.
func verifyCommit(ctx context.Context, mirror *source.Mirror, specText, commit string) error {
	spec, err := source.ParseSpec(specText)
	if err != nil {
		return err
	}
	refused := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s resolved to %s, but %s; nothing deployed (the server's record of this release is wrong: check who resolved it, or create the release again)",
			ErrWrongCommit, spec, commit, fmt.Sprintf(format, args...))
	}
	if len(commit) != 40 && len(commit) != 64 || strings.Trim(commit, "0123456789abcdef") != "" {
		return refused("that is not a full lower-case hex commit")
	}
	if spec.Kind == source.KindCommit {
		if !strings.HasPrefix(commit, spec.Name) {
			return refused("it does not match %s", spec)
		}
		return nil
	}
	// check returns a refusal, or an error when the mirror cannot tell.
	check := func() (refusal, err error) {
		named, err := mirror.Resolve(ctx, spec)
		if err != nil {
			return nil, err
		}
		if spec.Kind == source.KindTag {
			if named != commit {
				return refused("tag %s is %s in %s", spec.Name, named, mirror.URL), nil
			}
			return nil, nil
		}
		if !mirror.Has(ctx, commit) {
			return refused("no branch or tag of %s holds that commit", mirror.URL), nil
		}
		on, err := mirror.IsAncestor(ctx, commit, named)
		if err != nil {
			return nil, err
		}
		if !on {
			return refused("it is not on branch %s (at %s) of %s", spec.Name, named, mirror.URL), nil
		}
		return nil, nil
	}
	if refusal, err := check(); refusal == nil && err == nil {
		return nil
	}
	if err := mirror.Fetch(ctx); err != nil {
		return fmt.Errorf("check %s against %s: %w", commit, spec, err)
	}
	refusal, err := check()
	if err != nil {
		return refused("%v", err)
	}
	return refusal
}
