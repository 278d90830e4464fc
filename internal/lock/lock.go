// Package lock holds an environment's deploy lock: a lease with a heartbeat
// and a fencing token, so that a second deploy fails fast naming the holder,
// and a lock whose holder died expires instead of blocking everyone.
//
// File is the host-file-backed lock push mode takes on every host, in
// <deploy_to>/.drover/lock.
package lock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// DefaultLease is how long a lock outlives its last heartbeat.
const DefaultLease = 60 * time.Second

// MinLease and MaxLease bound the lease a deployer may ask for: shorter
// than a few heartbeats over a slow link and the lock lapses under a live
// deployer; longer and a dead one blocks everyone for that long.
const (
	MinLease = 5 * time.Second
	MaxLease = time.Hour
)

// CheckLease says what is wrong with lease d as a deployer's choice.
func CheckLease(d time.Duration) error {
	if d < MinLease || d > MaxLease {
		return fmt.Errorf("lease %s is out of bounds: give between %s and %s (default %s)", d, round(MinLease), round(MaxLease), round(DefaultLease))
	}
	return nil
}

// round prints d without zero units: 1h, 1m, 5s.
func round(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Holder says who holds a lock.
type Holder struct {
	Owner     string        `json:"owner"`            // user@machine of the deployer
	PID       int           `json:"pid"`              // the deployer's process
	Command   string        `json:"command"`          // what it is doing, like "deploy production"
	Started   time.Time     `json:"started"`          // when it took the lock
	Heartbeat time.Time     `json:"heartbeat"`        // last proof of life
	Lease     time.Duration `json:"lease"`            // the lock expires this long after Heartbeat
	Token     int64         `json:"token"`            // fencing token: grows with every acquisition
	Manual    bool          `json:"manual,omitempty"` // taken by `drover lock`, kept until `drover unlock`
	// Note says what the holder waits for, like a paused canary and how to
	// decide it; it changes while the lock is held (SetNote).
	Note string `json:"note,omitempty"`
}

// Stale reports whether the holder's lease ran out at now.
func (h *Holder) Stale(now time.Time) bool {
	return !h.Manual && now.After(h.Heartbeat.Add(h.Lease))
}

// HeldError is returned when someone else holds the lock.
type HeldError struct {
	Holder Holder
	Now    time.Time
}

func (e *HeldError) Error() string {
	h := e.Holder
	who := fmt.Sprintf("%s (pid %d)", h.Owner, h.PID)
	if h.Manual || h.PID == 0 {
		who = h.Owner
	}
	what := fmt.Sprintf("%s since %s (%s ago)", who, h.Started.UTC().Format(time.RFC3339), e.Now.Sub(h.Started).Round(time.Second))
	if h.Command != "" {
		what += ", running " + h.Command
	}
	if h.Note != "" {
		what += "; " + h.Note
	}
	if h.Manual {
		return "deploy lock held by " + what + " with `drover lock`; `drover unlock` frees it"
	}
	return fmt.Sprintf("deploy lock held by %s; last heartbeat %s ago, it expires %s after that (or run `drover unlock` if you are sure it is gone)",
		what, e.Now.Sub(h.Heartbeat).Round(time.Second), h.Lease)
}

// ErrLapsed is returned by Hold when the holder stopped proving it is
// alive (no heartbeat for longer than its lease): the lock was released.
var ErrLapsed = errors.New("deploy lock lapsed: no heartbeat from the deployer for longer than its lease (suspended, or cut off); the lock was freed")

// ErrLost is returned by Heartbeat and Release when the lock was taken over
// or released by someone else since it was acquired.
var ErrLost = errors.New("deploy lock lost: another deployer took it over")

// File is a deploy lock kept in a file on one host.
type File struct {
	Path string
	Now  func() time.Time
}

type fileState struct {
	Schema int     `json:"schema"`
	Token  int64   `json:"token"` // last token issued
	Holder *Holder `json:"holder,omitempty"`
}

func (f *File) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}

// with runs fn under an flock of Path's mutex file, with the current state.
func (f *File) with(fn func(st *fileState) (write bool, err error)) error {
	if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	mu, err := os.OpenFile(f.Path+".mu", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	defer mu.Close()
	if err := syscall.Flock(int(mu.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock: flock: %w", err)
	}
	st := &fileState{Schema: 1}
	data, err := os.ReadFile(f.Path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("lock: %w", err)
	default:
		if err := json.Unmarshal(data, st); err != nil {
			// A torn or hand-edited file: treat as free, keep tokens growing.
			st = &fileState{Schema: 1, Token: time.Now().UnixNano()}
		}
	}
	write, err := fn(st)
	if err != nil || !write {
		return err
	}
	out, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := f.Path + ".tmp"
	if err := os.WriteFile(tmp, append(out, '\n'), 0o644); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	if fh, err := os.Open(tmp); err == nil {
		_ = fh.Sync()
		fh.Close()
	}
	if err := os.Rename(tmp, f.Path); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	return nil
}

// Acquire takes the lock for h, or takes it over when the holder's lease ran
// out. It returns the holder as recorded, with its fencing token, or a
// *HeldError naming who holds it.
func (f *File) Acquire(h Holder) (Holder, error) {
	now := f.now()
	err := f.with(func(st *fileState) (bool, error) {
		if st.Holder != nil && !st.Holder.Stale(now) {
			return false, &HeldError{Holder: *st.Holder, Now: now}
		}
		st.Token++
		h.Token, h.Started, h.Heartbeat = st.Token, now, now
		if h.Lease == 0 {
			h.Lease = DefaultLease
		}
		st.Holder = &h
		return true, nil
	})
	return h, err
}

// Heartbeat renews the lease of the holder with token.
func (f *File) Heartbeat(token int64) error {
	return f.with(func(st *fileState) (bool, error) {
		if st.Holder == nil || st.Holder.Token != token {
			return false, ErrLost
		}
		st.Holder.Heartbeat = f.now()
		return true, nil
	})
}

// SetNote sets the Note of the holder with token.
func (f *File) SetNote(token int64, note string) error {
	return f.with(func(st *fileState) (bool, error) {
		if st.Holder == nil || st.Holder.Token != token {
			return false, ErrLost
		}
		st.Holder.Note = note
		return true, nil
	})
}

// Release frees the lock if token still holds it.
func (f *File) Release(token int64) error {
	return f.with(func(st *fileState) (bool, error) {
		if st.Holder == nil || st.Holder.Token != token {
			return false, ErrLost
		}
		st.Holder = nil
		return true, nil
	})
}

// Break frees the lock whoever holds it (`drover unlock`) and returns who did.
func (f *File) Break() (*Holder, error) {
	var was *Holder
	err := f.with(func(st *fileState) (bool, error) {
		was, st.Holder = st.Holder, nil
		return was != nil, nil
	})
	return was, err
}

// Read returns the current holder, or nil when the lock is free or stale.
func (f *File) Read() (*Holder, error) {
	var h *Holder
	err := f.with(func(st *fileState) (bool, error) {
		if st.Holder != nil && !st.Holder.Stale(f.now()) {
			h = st.Holder
		}
		return false, nil
	})
	return h, err
}

// Check returns nil when token holds the lock now, ErrLost otherwise.
// Engine verbs call it so that a deployer whose lock was taken over cannot
// go on changing the host (the fencing token's job).
func (f *File) Check(token int64) error {
	return f.with(func(st *fileState) (bool, error) {
		if st.Holder == nil || st.Holder.Token != token {
			return false, ErrLost
		}
		return false, nil
	})
}

// Hold acquires the lock and keeps it while the holder proves it is alive:
// each value received on beats renews the lease, and when none arrives for
// a whole lease the lock is released and Hold returns ErrLapsed, whatever
// the connection to the holder says. When ctx ends the lock is released
// and Hold returns nil. ready receives the holder once acquired. Hold
// returns the acquisition error, or ErrLost if the lock was taken over
// while held.
func (f *File) Hold(ctx context.Context, h Holder, ready func(Holder), beats <-chan struct{}) error {
	held, err := f.Acquire(h)
	if err != nil {
		return err
	}
	if ready != nil {
		ready(held)
	}
	lapse := time.NewTimer(held.Lease)
	defer lapse.Stop()
	release := func() error {
		if err := f.Release(held.Token); err != nil && !errors.Is(err, ErrLost) {
			return err
		}
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return release()
		case <-beats:
			if err := f.Heartbeat(held.Token); err != nil {
				return err
			}
			lapse.Reset(held.Lease)
		case <-lapse.C:
			if err := release(); err != nil {
				return err
			}
			return ErrLapsed
		}
	}
}
