package rollout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/drover/drover/internal/release"
)

// Gate decides whether a paused canary goes on. The CLI's gate runs the
// environment's canary check (a command or a URL) for canary.wait.
type Gate interface {
	// Wait blocks while the canary runs on hosts, and returns nil to
	// promote it, or an error that says why it must be rolled back (a
	// failed check, an interrupted deploy).
	Wait(ctx context.Context, hosts []string) error
}

// canary is rolling with a pause after the first batch: the canary hosts
// run the release, in the load balancer, while the gate (if any) and the
// operators decide: `drover promote` or `drover abort` writes a decision on
// the canary hosts, which the paused deployer polls. Promoted, the other
// batches follow as in rolling; otherwise the canary hosts go back to their
// previous release through the same drain and enable steps. The deploy
// lock stays held during the pause.
type canary struct {
	*rolling
	gate Gate // nil: only an operator decides
}

// decisionPoll bounds the wait between two reads of the canary hosts'
// decision: it starts at 50ms and doubles up to this.
const decisionPoll = time.Second

func (s *canary) activate(ctx context.Context, r *run, rep *Report) {
	prev, ok := s.start(ctx, r, rep, true)
	if !ok {
		return
	}
	var t tally
	batches := s.batches(r.targets)
	stop := s.roll(ctx, r, rep, batches[:1], 0, len(batches), &t, prev)
	if stop == "" && len(t.failed) > 0 {
		stop = fmt.Sprintf("the canary failed on %s", strings.Join(t.failed, ", "))
	}
	// Hosts that failed to prepare count against max_fail from here on.
	t.failed = append(slices.Clone(s.prepFailed), t.failed...)
	if stop == "" {
		// A canary of the whole fleet still waits out its gate: a failing
		// check rolls it back.
		if err := s.pause(ctx, r, rep, batches[0]); err != nil {
			r.skipRest("activate")
			msg := err.Error()
			if !strings.HasPrefix(msg, "canary aborted") {
				msg = "canary aborted: " + msg
			}
			rep.Err = msg + "; " + s.rollBack(ctx, r, rep, t.moved, prev)
			return
		}
		stop = s.roll(ctx, r, rep, batches[1:], 1, len(batches), &t, prev)
	}
	s.finish(ctx, r, rep, &t, stop, prev)
}

// pause records the paused canary on its hosts and waits for the gate's
// verdict or an operator's decision, whichever comes first. nil promotes.
// The record is cleared when the pause ends.
func (s *canary) pause(ctx context.Context, r *run, rep *Report, hosts []Target) error {
	names := make([]string, len(hosts))
	for i, tg := range hosts {
		names[i] = tg.Name()
	}
	rec := &release.Canary{Release: r.plan.ID, Hosts: names, Since: time.Now(), Deployer: r.plan.By}
	for _, tg := range hosts {
		if _, err := tg.Canary(ctx, r.call(tg), "pause", rec); err != nil {
			return fmt.Errorf("could not record the paused canary on %s: %w", tg.Name(), err)
		}
	}
	defer func() {
		// The rollout goes on or rolls back either way: clear it even
		// when the deploy was interrupted.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, tg := range hosts {
			if _, err := tg.Canary(cctx, r.call(tg), "clear", nil); err != nil {
				r.note(rep, tg.Name(), "could not clear the paused canary's record: "+err.Error())
			}
		}
	}()
	env := r.plan.Env.Name
	r.obs.Phase(fmt.Sprintf("canary: paused on %s; drover promote %s or drover abort %s", strings.Join(names, ", "), env, env))

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	verdict := make(chan error, 2)
	if s.gate != nil {
		go func() { verdict <- s.gate.Wait(wctx, names) }()
	}
	go func() { verdict <- s.decision(wctx, r, hosts) }()
	err := <-verdict
	var d *decided
	switch {
	case errors.As(err, &d) && d.promote:
		r.note(rep, "", fmt.Sprintf("canary on %s promoted by %s", strings.Join(names, ", "), d.by))
		return nil
	case errors.As(err, &d):
		return fmt.Errorf("canary aborted by %s", d.by)
	case err == nil:
		r.note(rep, "", "canary on "+strings.Join(names, ", ")+" promoted")
	}
	return err
}

// decided is an operator's decision, read from a canary host.
type decided struct {
	promote bool
	by      string
}

func (d *decided) Error() string {
	if d.promote {
		return "promoted by " + d.by
	}
	return "aborted by " + d.by
}

// decision polls hosts for an operator's decision on this rollout's
// release until one is found (a *decided) or ctx ends. A host that cannot
// be read is asked again; a record of another release is ignored.
func (s *canary) decision(ctx context.Context, r *run, hosts []Target) error {
	wait := 50 * time.Millisecond
	for {
		for _, tg := range hosts {
			c, err := tg.Canary(ctx, r.call(tg), "status", nil)
			if err != nil || c == nil || c.Release != r.plan.ID || c.Decision == "" {
				continue
			}
			by := c.By
			if by == "" {
				by = "an operator"
			}
			return &decided{promote: c.Decision == release.CanaryPromote, by: by}
		}
		select {
		case <-ctx.Done():
			return errors.New("the deploy was interrupted while the canary was paused")
		case <-time.After(wait):
		}
		wait = min(2*wait, decisionPoll)
	}
}
