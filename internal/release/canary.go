package release

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Canary decisions.
const (
	CanaryPromote = "promote"
	CanaryAbort   = "abort"
)

// Canary is the record of a paused canary on one of its hosts, in
// <deploy_to>/.drover/canary.json: the deployer writes it when it pauses,
// `drover promote` or `drover abort` adds the decision, the deployer reads
// it and removes it when the rollout ends. It names its release, so a
// decision left from an earlier rollout never applies to a new one.
type Canary struct {
	Release  string    `json:"release"`
	Hosts    []string  `json:"hosts"` // the canary hosts
	Since    time.Time `json:"since"` // when the deployer paused
	Deployer string    `json:"deployer,omitempty"`
	Decision string    `json:"decision,omitempty"` // promote or abort, once decided
	By       string    `json:"by,omitempty"`       // who decided
	At       time.Time `json:"at,omitzero"`        // when
}

// CanaryFile is the canary record of a deploy root's state directory.
type CanaryFile struct{ Path string }

// Canary is this engine's canary record file.
func (e *Engine) Canary() *CanaryFile {
	return &CanaryFile{Path: filepath.Join(e.Layout.State(), "canary.json")}
}

// with runs fn on the record (nil when none) under an flock; a non-nil
// result replaces the file, a nil one with write set removes it.
func (f *CanaryFile) with(fn func(c *Canary) (next *Canary, write bool, err error)) error {
	if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
		return fmt.Errorf("canary record: %w", err)
	}
	mu, err := os.OpenFile(f.Path+".mu", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("canary record: %w", err)
	}
	defer mu.Close()
	if err := syscall.Flock(int(mu.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("canary record: flock: %w", err)
	}
	var cur *Canary
	data, err := os.ReadFile(f.Path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("canary record: %w", err)
	default:
		cur = &Canary{}
		if err := json.Unmarshal(data, cur); err != nil {
			cur = nil // torn or hand-edited: no paused canary
		}
	}
	next, write, err := fn(cur)
	if err != nil || !write {
		return err
	}
	if next == nil {
		if err := os.Remove(f.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("canary record: %w", err)
		}
		return nil
	}
	out, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(f.Path, append(out, '\n'), 0o644); err != nil {
		return fmt.Errorf("canary record %s: %w", f.Path, err)
	}
	return nil
}

// Read returns the record, nil when no canary is paused.
func (f *CanaryFile) Read() (*Canary, error) {
	var out *Canary
	err := f.with(func(c *Canary) (*Canary, bool, error) {
		out = c
		return nil, false, nil
	})
	return out, err
}

// Pause records that c's release is paused on its canary hosts, replacing
// any earlier record and its decision.
func (f *CanaryFile) Pause(c Canary) error {
	c.Decision, c.By, c.At = "", "", time.Time{}
	return f.with(func(*Canary) (*Canary, bool, error) { return &c, true, nil })
}

// Decide records decision (promote or abort) by who for the canary of
// release id. It refuses when no canary is paused, or when the paused one
// is another release; a decision already taken stays. It returns the record.
func (f *CanaryFile) Decide(id, decision, by string, now time.Time) (*Canary, error) {
	if decision != CanaryPromote && decision != CanaryAbort {
		return nil, fmt.Errorf("canary decision %q: use promote or abort", decision)
	}
	var out *Canary
	err := f.with(func(c *Canary) (*Canary, bool, error) {
		switch {
		case c == nil:
			return nil, false, errors.New("no canary is paused here")
		case id != "" && c.Release != id:
			return nil, false, fmt.Errorf("the paused canary is release %s, not %s", c.Release, id)
		case c.Decision != "":
			out = c
			return nil, false, nil
		}
		c.Decision, c.By, c.At = decision, by, now
		out = c
		return c, true, nil
	})
	return out, err
}

// Clear removes the record of release id (any record when id is empty).
func (f *CanaryFile) Clear(id string) error {
	return f.with(func(c *Canary) (*Canary, bool, error) {
		return nil, c != nil && (id == "" || c.Release == id), nil
	})
}
