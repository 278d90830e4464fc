package release

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Layout names the paths under one deploy_to (DESIGN.md, "Node layout").
type Layout struct {
	Root string
}

// Current is the symlink to the active release.
func (l Layout) Current() string { return filepath.Join(l.Root, "current") }

// Releases holds one directory per release.
func (l Layout) Releases() string { return filepath.Join(l.Root, "releases") }

// Release is the directory of release id.
func (l Layout) Release(id string) string { return filepath.Join(l.Root, "releases", id) }

// Shared survives releases.
func (l Layout) Shared() string { return filepath.Join(l.Root, "shared") }

// Repo is the cached bare mirror.
func (l Layout) Repo() string { return filepath.Join(l.Root, "repo") }

// State is drover's own directory on the host.
func (l Layout) State() string { return filepath.Join(l.Root, ".drover") }

// ActiveID returns the release `current` points at, or "" when there is none.
func (l Layout) ActiveID() (string, error) {
	target, err := os.Readlink(l.Current())
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read current: %w", err)
	}
	return filepath.Base(target), nil
}

// switchCurrent points `current` at release id atomically: a temporary
// symlink renamed over the old one, then the directory synced.
func (l Layout) switchCurrent(id string) error {
	tmp := filepath.Join(l.Root, ".current."+randomSuffix())
	if err := os.Symlink(filepath.Join("releases", id), tmp); err != nil {
		return fmt.Errorf("switch current: %w", err)
	}
	if err := os.Rename(tmp, l.Current()); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("switch current: %w", err)
	}
	if err := syncDir(l.Root); err != nil {
		return fmt.Errorf("switch current: sync %s: %w", l.Root, err)
	}
	return nil
}

// removeCurrent deletes the `current` symlink (only after a failed first deploy).
func (l Layout) removeCurrent() error {
	if err := os.Remove(l.Current()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return syncDir(l.Root)
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

var idRE = regexp.MustCompile(`^\d{8}T\d{6}Z-[0-9a-f]{7,40}(-\d+)?$`)

// NewID names a release: its UTC creation time and the commit's short SHA,
// like 20261122T101500Z-3f9c2ab. A rollout makes the ID once so that every
// host records the same one.
func NewID(t time.Time, commit string) string {
	short := commit
	if len(short) > 7 {
		short = short[:7]
	}
	return t.UTC().Format("20060102T150405Z") + "-" + strings.ToLower(short)
}

// ValidID reports whether id has the form NewID makes.
func ValidID(id string) bool { return idRE.MatchString(id) }

// CheckID returns an error unless id is a release ID.
func CheckID(id string) error {
	if !ValidID(id) {
		return fmt.Errorf("%q is not a release ID (they look like 20261122T101500Z-3f9c2ab; see `drover releases`)", id)
	}
	return nil
}
