package rollout

import "context"

// allAtOnce is the two-phase strategy: by the time it runs, every host has
// prepared (the barrier) and the run_once hooks ran; it activates every
// host at once, so the activation window, from the first `current` switch
// to the last, is as short as the slowest host's switch allows.
type allAtOnce struct{}

func (allAtOnce) activate(ctx context.Context, r *run, rep *Report) {
	r.each(ctx, 0, func(ctx context.Context, t Target) { r.activateOne(ctx, t) })
	if r.failed() {
		rep.Err = r.mixedSummary()
	}
}
