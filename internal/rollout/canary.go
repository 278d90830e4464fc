package rollout

import (
	"context"
	"fmt"
	"strings"
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
// run the release, in the load balancer, while the gate decides. Promoted,
// the other batches follow as in rolling; otherwise the canary hosts go
// back to their previous release through the same drain and enable steps.
// The deploy lock stays held during the pause.
type canary struct {
	*rolling
	gate Gate
}

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
	if stop == "" {
		// A canary of the whole fleet still waits out its gate: a failing
		// check rolls it back.
		names := make([]string, len(batches[0]))
		for i, tg := range batches[0] {
			names[i] = tg.Name()
		}
		r.obs.Phase("canary: paused on " + strings.Join(names, ", "))
		if err := s.gate.Wait(ctx, names); err != nil {
			r.skipRest("activate")
			rep.Err = "canary aborted: " + err.Error() + "; " + s.rollBack(ctx, r, rep, t.moved, prev)
			return
		}
		r.note(rep, "", "canary on "+strings.Join(names, ", ")+" promoted")
		stop = s.roll(ctx, r, rep, batches[1:], 1, len(batches), &t, prev)
	}
	s.finish(ctx, r, rep, &t, stop, prev)
}
