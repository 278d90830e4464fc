// Package source says where a release's code comes from: version specs
// (branch:, tag:, commit:) and the cached git mirror each host keeps, from
// which a commit is materialised into a release directory.
package source

import (
	"errors"
	"fmt"
	"strings"
)

// Kinds of version spec.
const (
	KindBranch = "branch"
	KindTag    = "tag"
	KindCommit = "commit"
)

// Spec is a parsed version spec such as "tag:v1.2" (seed 000's syntax).
type Spec struct {
	Kind string
	Name string
}

func (s Spec) String() string { return s.Kind + ":" + s.Name }

// ErrBadSpec is wrapped by every error ParseSpec returns.
var ErrBadSpec = errors.New("bad version spec")

// ParseSpec parses "branch:NAME", "tag:NAME" or "commit:SHA". It rejects
// spaces around the colon, empty names and unknown kinds before any host is
// touched.
func ParseSpec(s string) (Spec, error) {
	bad := func(format string, args ...any) (Spec, error) {
		return Spec{}, fmt.Errorf("%w %q: %s", ErrBadSpec, s, fmt.Sprintf(format, args...))
	}
	if s == "" {
		return bad("empty; use branch:NAME, tag:NAME or commit:SHA")
	}
	kind, name, ok := strings.Cut(s, ":")
	if !ok {
		return bad("no kind; use branch:%s, tag:%s or commit:SHA", s, s)
	}
	if strings.TrimSpace(kind) != kind || strings.TrimSpace(name) != name {
		return bad("no spaces around the colon; write %s:%s", strings.TrimSpace(kind), strings.TrimSpace(name))
	}
	if name == "" {
		return bad("nothing after %q", kind+":")
	}
	switch kind {
	case KindBranch, KindTag:
		if err := checkRefName(name); err != nil {
			return bad("%v", err)
		}
	case KindCommit:
		if len(name) < 4 || len(name) > 64 || strings.Trim(strings.ToLower(name), "0123456789abcdef") != "" {
			return bad("a commit is 4 to 40 hex digits")
		}
		name = strings.ToLower(name)
	default:
		return bad("unknown kind %q; use branch, tag or commit", kind)
	}
	return Spec{Kind: kind, Name: name}, nil
}

// checkRefName applies git check-ref-format's rules to one branch or tag name.
func checkRefName(n string) error {
	switch {
	case strings.HasPrefix(n, "-"):
		return errors.New("a name may not start with '-'")
	case strings.HasPrefix(n, "/") || strings.HasSuffix(n, "/") || strings.Contains(n, "//"):
		return errors.New("a name may not start or end with '/' or hold '//'")
	case strings.Contains(n, ".."), strings.Contains(n, "@{"), n == "@":
		return errors.New("a name may not contain '..' or '@{'")
	case strings.HasSuffix(n, ".") || strings.HasSuffix(n, ".lock"):
		return errors.New("a name may not end with '.' or '.lock'")
	}
	for _, part := range strings.Split(n, "/") {
		if strings.HasPrefix(part, ".") {
			return errors.New("no part of a name may start with '.'")
		}
	}
	for _, r := range n {
		if r < 0x20 || r == 0x7f || strings.ContainsRune(" ~^:?*[\\", r) {
			return fmt.Errorf("a name may not contain %q", r)
		}
	}
	return nil
}
