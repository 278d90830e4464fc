package release

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Status is where a release stands on one host.
type Status string

// Release statuses, as recorded in .drover/releases.json.
const (
	StatusPreparing  Status = "preparing"   // prepare began and has not finished (running, or interrupted)
	StatusPrepared   Status = "prepared"    // complete and ready to activate
	StatusActivating Status = "activating"  // activation began and has not finished
	StatusActive     Status = "active"      // `current` points at it
	StatusGood       Status = "good"        // was active and healthy; a rollback target
	StatusFailed     Status = "failed"      // prepare or activation failed
	StatusRolledBack Status = "rolled_back" // was active, then rolled back from
	// StatusUnknown is a directory under releases/ that the state file
	// does not record (it was lost or damaged). drover cannot vouch for it:
	// it is never activated, and cleanup removes it only when named.
	StatusUnknown Status = "unknown"
)

// Step is one recorded step of a release's prepare or activation.
type Step struct {
	Name    string        `json:"name"`
	OK      bool          `json:"ok"`
	Started time.Time     `json:"started"`
	Elapsed time.Duration `json:"elapsed"`
	Error   string        `json:"error,omitempty"`
}

// Record is everything a host knows about one release.
type Record struct {
	ID string `json:"id"`
	// Seq orders the releases as this host recorded them: one more than
	// the last for each new record. Rollback, resume and cleanup go by it,
	// never by the time in the ID, which the deployer's clock made.
	Seq         int64     `json:"seq"`
	Commit      string    `json:"commit"`
	Spec        string    `json:"spec,omitempty"`
	Env         string    `json:"env,omitempty"`
	By          string    `json:"by,omitempty"`
	Status      Status    `json:"status"`
	CreatedAt   time.Time `json:"created_at"`
	PreparedAt  time.Time `json:"prepared_at,omitzero"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	KeepUntil   time.Time `json:"keep_until,omitzero"`
	// Hotfix marks a code-only release (deploy --hotfix): hooks marked
	// hotfix: skip do not run for it, in its prepare, its activation or a
	// resume of either.
	Hotfix     bool   `json:"hotfix,omitempty"`
	Previous   string `json:"previous,omitempty"`
	FailedStep string `json:"failed_step,omitempty"`
	Error      string `json:"error,omitempty"`
	Steps      []Step `json:"steps,omitempty"`
}

// done reports whether step name already succeeded for this release.
func (r *Record) done(name string) bool {
	for _, s := range r.Steps {
		if s.Name == name && s.OK {
			return true
		}
	}
	return false
}

// Pinned reports whether the release is kept by `prepare --keep-days` at now.
func (r *Record) Pinned(now time.Time) bool { return now.Before(r.KeepUntil) }

// record stores the outcome of step name, replacing an earlier attempt.
func (r *Record) record(s Step) {
	r.Steps = slices.DeleteFunc(r.Steps, func(x Step) bool { return x.Name == s.Name })
	r.Steps = append(r.Steps, s)
}

// stateSchema is the version of the releases.json format.
const stateSchema = 1

type stateFile struct {
	Schema   int       `json:"schema"`
	Releases []*Record `json:"releases"`
}

// state is the release history of one deploy_to, persisted like a database.
type state struct {
	path     string
	releases []*Record
}

func loadState(path string) (*state, error) {
	s := &state{path: path}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var f stateFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("read state %s: %w: the file is damaged, and nothing on this host changes until it is readable. "+
			"Move it aside (mv %s %s.damaged) and run `drover releases ENV`: every directory under releases/ is listed as unknown, "+
			"the one current points to as active; no release is deleted, and cleanup keeps unknown ones until you name one with `drover cleanup ENV --remove RELEASE`", path, err, path, path)
	}
	if f.Schema > stateSchema {
		return nil, fmt.Errorf("read state %s: schema %d is newer than this drover understands (%d); upgrade drover", path, f.Schema, stateSchema)
	}
	s.releases = f.Releases
	s.numberLegacy()
	return s, nil
}

// numberLegacy gives records written before Seq existed a sequence, in the
// order of their CreatedAt (this host's clock), before every numbered one.
func (s *state) numberLegacy() {
	var legacy []*Record
	for _, r := range s.releases {
		if r.Seq == 0 {
			legacy = append(legacy, r)
		}
	}
	if len(legacy) == 0 {
		return
	}
	slices.SortStableFunc(legacy, func(a, b *Record) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return cmpString(a.ID, b.ID)
	})
	for _, r := range s.releases {
		if r.Seq != 0 {
			r.Seq += int64(len(legacy))
		}
	}
	for i, r := range legacy {
		r.Seq = int64(i + 1)
	}
}

// add records a new release, numbering it after every other one.
func (s *state) add(r *Record) {
	for _, x := range s.releases {
		r.Seq = max(r.Seq, x.Seq)
	}
	r.Seq++
	s.releases = append(s.releases, r)
}

// newestFirst orders records as this host recorded them, newest first.
func newestFirst(a, b *Record) int { return cmp.Compare(b.Seq, a.Seq) }

func (s *state) find(id string) *Record {
	for _, r := range s.releases {
		if r.ID == id {
			return r
		}
	}
	return nil
}

// save writes the state: temp file, fsync, rename, fsync the directory.
func (s *state) save() error {
	slices.SortFunc(s.releases, func(a, b *Record) int { return cmp.Compare(a.Seq, b.Seq) })
	data, err := json.MarshalIndent(stateFile{Schema: stateSchema, Releases: s.releases}, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(s.path, append(data, '\n'), 0o644)
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// writeFileAtomic replaces path with data so that a crash leaves either the
// old or the new content, never a mix.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// syncFS flushes the filesystem holding dir to disk (syncfs(2)), so that
// a power cut after a release is recorded prepared cannot leave it with
// zero-length files.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s to disk: %w", dir, err)
	}
	return nil
}
