package rollout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/drover/drover/internal/release"
)

// HostReleases is what one host reports about its releases.
type HostReleases struct {
	Host     string            `json:"host"`
	Active   string            `json:"active"`
	Releases []*release.Record `json:"releases"`
	Target   string            `json:"rollback_target,omitempty"`
	Error    string            `json:"error,omitempty"`
}

// Releases asks every host for its releases and its rollback target, in
// parallel, and returns the answers in target order; a host that could not
// answer has Error set.
func Releases(ctx context.Context, plan *Plan, targets []Target) []*HostReleases {
	out := make([]*HostReleases, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hr, err := t.Releases(ctx, plan.call(0, nil))
			switch {
			case err != nil:
				var ne *NodeError
				if !errors.As(err, &ne) {
					err = fmt.Errorf("unreachable: %w", err)
				}
				hr = &HostReleases{Error: err.Error()}
			case hr == nil:
				hr = &HostReleases{}
			}
			hr.Host = t.Name()
			out[i] = hr
		}()
	}
	wg.Wait()
	return out
}

// RollbackTarget finds the release every host can go back to: to when it
// is given, else the hosts' common previous good release. It refuses,
// naming the hosts, when one lacks the release.
func RollbackTarget(hosts []*HostReleases, to string) (string, error) {
	named := to != "" // an operator may name a release the host cannot vouch for
	var problems []string
	for _, h := range hosts {
		if h.Error != "" {
			problems = append(problems, fmt.Sprintf("%s: %s", h.Host, h.Error))
		}
	}
	if len(problems) > 0 {
		return "", fmt.Errorf("cannot roll back, not every host answered:\n  %s", strings.Join(problems, "\n  "))
	}
	if to == "" {
		targets := map[string][]string{}
		for _, h := range hosts {
			targets[h.Target] = append(targets[h.Target], h.Host)
		}
		if len(targets) == 1 {
			for t := range targets {
				to = t
			}
		}
		if to == "" {
			var parts []string
			for t, hs := range targets {
				if t == "" {
					t = "(none)"
				}
				parts = append(parts, fmt.Sprintf("%s → %s", strings.Join(hs, ", "), t))
			}
			sort.Strings(parts)
			return "", fmt.Errorf("hosts disagree on the previous good release (%s); pick one with --to RELEASE (see `drover releases`)", strings.Join(parts, "; "))
		}
	}
	var missing []string
	for _, h := range hosts {
		idx := slices.IndexFunc(h.Releases, func(r *release.Record) bool { return r.ID == to })
		if idx < 0 {
			missing = append(missing, h.Host+" (not there)")
			continue
		}
		switch h.Releases[idx].Status {
		case release.StatusGood, release.StatusActive, release.StatusRolledBack, release.StatusPrepared:
		case release.StatusUnknown:
			// Found on disk after the state was lost: only when named.
			if !named {
				missing = append(missing, fmt.Sprintf("%s (unknown: name it with --to to use it)", h.Host))
			}
		default:
			missing = append(missing, fmt.Sprintf("%s (%s)", h.Host, h.Releases[idx].Status))
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("cannot roll back to %s: not a good release on %s", to, strings.Join(missing, ", "))
	}
	return to, nil
}

// Resumable finds the release of the last unfinished deploy on these hosts:
// the newest release that some host holds and not every host runs. It
// returns its ID, commit and spec.
func Resumable(hosts []*HostReleases) (id, commit, spec string, err error) {
	var problems []string
	for _, h := range hosts {
		if h.Error != "" {
			problems = append(problems, fmt.Sprintf("%s: %s", h.Host, h.Error))
		}
	}
	if len(problems) > 0 {
		return "", "", "", fmt.Errorf("cannot resume, not every host answered:\n  %s", strings.Join(problems, "\n  "))
	}
	newest, rec := newestRecorded(hosts)
	if rec == nil {
		return "", "", "", fmt.Errorf("nothing to resume: no host has a release")
	}
	all := true
	for _, h := range hosts {
		if h.Active != newest {
			all = false
		}
	}
	if all {
		return "", "", "", fmt.Errorf("nothing to resume: every host runs %s", newest)
	}
	var rolledBack []string
	for _, h := range hosts {
		for _, r := range h.Releases {
			if r.ID == newest && r.Status == release.StatusRolledBack {
				rolledBack = append(rolledBack, h.Host)
			}
		}
	}
	if len(rolledBack) > 0 {
		return "", "", "", fmt.Errorf("nothing to resume: %s was rolled back on %s, not interrupted; to return to it run `drover activate ENV %s`, or deploy a new release", newest, strings.Join(rolledBack, ", "), newest)
	}
	for _, h := range hosts {
		for _, r := range h.Releases {
			if r.ID == newest && r.Status == release.StatusFailed && !r.PreparedAt.IsZero() && hasStep(r, "switch") {
				return "", "", "", fmt.Errorf("cannot resume %s: its activation failed on %s and was reverted; deploy again or roll back", newest, h.Host)
			}
		}
	}
	return newest, rec.Commit, rec.Spec, nil
}

// newestRecorded returns the release the hosts recorded last, by each
// host's own sequence, never by the time in the ID (the deployer's clock):
// of each host's newest record, the one no host recorded before another
// of them. Records without a sequence (older hosts) fall back to the ID.
func newestRecorded(hosts []*HostReleases) (string, *release.Record) {
	newer := func(a, b *release.Record) bool { // a recorded after b on one host
		if a.Seq != 0 || b.Seq != 0 {
			return a.Seq > b.Seq
		}
		return a.ID > b.ID
	}
	var cands []*release.Record
	for _, h := range hosts {
		var top *release.Record
		for _, r := range h.Releases {
			if top == nil || newer(r, top) {
				top = r
			}
		}
		if top != nil && !slices.ContainsFunc(cands, func(c *release.Record) bool { return c.ID == top.ID }) {
			cands = append(cands, top)
		}
	}
	var best *release.Record
	for _, c := range cands {
		superseded := false
		for _, h := range hosts {
			mine := slices.IndexFunc(h.Releases, func(r *release.Record) bool { return r.ID == c.ID })
			if mine < 0 {
				continue
			}
			for _, d := range cands {
				i := slices.IndexFunc(h.Releases, func(r *release.Record) bool { return r.ID == d.ID })
				if d.ID != c.ID && i >= 0 && newer(h.Releases[i], h.Releases[mine]) {
					superseded = true
				}
			}
		}
		if !superseded && (best == nil || c.ID > best.ID) {
			best = c
		}
	}
	if best == nil { // the hosts' orders contradict each other: go by ID
		for _, c := range cands {
			if best == nil || c.ID > best.ID {
				best = c
			}
		}
	}
	if best == nil {
		return "", nil
	}
	return best.ID, best
}

func hasStep(r *release.Record, name string) bool {
	for _, s := range r.Steps {
		if s.Name == name && s.OK {
			return true
		}
	}
	return false
}

// Rollback locks every host and switches it to plan.ID, which the caller
// checked with RollbackTarget, restarting services.
func Rollback(ctx context.Context, plan *Plan, targets []Target, obs Observer) (*Report, error) {
	r, rep := newRun(plan, targets, obs)
	defer r.finish(rep)
	ctx, unlock, err := r.lock(ctx, rep)
	if err != nil {
		return rep, err
	}
	defer unlock()
	obs.Phase("rollback")
	rep.Activate = true
	r.each(ctx, 0, func(ctx context.Context, t Target) {
		var sv *release.Serving
		ok := r.do(ctx, t, "rollback", func(ctx context.Context, c Call) (err error) {
			sv, err = t.Rollback(ctx, c, plan.ID)
			return err
		})
		if ok {
			res := r.result(t)
			res.Release, res.Serving = sv.Release, sv
		}
		obs.Done(t.Name(), r.result(t))
	})
	if r.failed() {
		rep.Err = r.mixedSummary()
	}
	return rep, nil
}
