package source

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// IsAncestor reports whether commit ancestor is reachable from commit
// descendant (or is it), both held by the mirror.
func (m *Mirror) IsAncestor(ctx context.Context, ancestor, descendant string) (bool, error) {
	cmd := exec.CommandContext(ctx, "git", "--git-dir", m.Dir, "merge-base", "--is-ancestor", "--", ancestor, descendant)
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return false, nil
	default:
		return false, fmt.Errorf("git merge-base --is-ancestor %s %s in %s: %v: %s", ancestor, descendant, m.Dir, err, strings.TrimSpace(string(out)))
	}
}
