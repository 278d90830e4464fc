package rollout

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/lb"
	"github.com/drover/drover/internal/release"
)

// Waits of the load-balancer steps that drover.yml does not set.
const (
	// DefaultUpTimeout bounds the wait for the load balancer to report a
	// re-enabled host UP.
	DefaultUpTimeout = 2 * time.Minute
	// DefaultPoll is how soon the load balancer is asked again while
	// waiting; the interval grows by half each time up to MaxPoll, so a
	// quick change is seen quickly and a long wait asks rarely.
	DefaultPoll = 50 * time.Millisecond
	// MaxPoll is the longest interval between two questions.
	MaxPoll = time.Second
)

// rolling activates the hosts batch by batch (serial is a batch of one).
// With a load balancer, each host of a batch is drained, waited for until
// idle (bounded), activated, re-enabled and waited for until the load
// balancer reports it UP; a batch is taken out only when the load
// balancer's own view says enough other members serve (min_healthy). Host
// failures count over the whole rollout: past max_fail it stops, and with
// rollback_on_failure switches back every host that moved, through the same
// steps.
type rolling struct {
	batch       int  // hosts per batch, at least 1
	minHealthy  int  // members that must keep serving, at least 1
	checkOwn    bool // without a load balancer: min_healthy was set, so check the rollout's own view
	maxFail     int  // failed hosts the whole rollout allows
	fleet       int  // hosts in the environment
	rollback    bool // rollback_on_failure
	drain       time.Duration
	healthyTime time.Duration // min_healthy_time
	upTimeout   time.Duration
	poll        time.Duration
	lb          lb.Balancer
	// prepFailed are the hosts that failed to prepare, counted against
	// max_fail (see tolerate).
	prepFailed []string
}

// tolerate implements tolerant: hosts failed in prepare count against
// max_fail like any other failure.
func (s *rolling) tolerate(failed []string) bool {
	if len(failed) > s.maxFail {
		return false
	}
	s.prepFailed = failed
	return true
}

func newRolling(plan *Plan, s config.Strategy, n int) *rolling {
	fleet := max(plan.Fleet, n)
	r := &rolling{
		batch:       max(1, min(s.Batch.Ceil(n), n)),
		minHealthy:  max(1, s.MinHealthy.Ceil(fleet)),
		checkOwn:    !s.MinHealthy.IsZero(),
		maxFail:     s.MaxFail.Floor(n),
		fleet:       fleet,
		rollback:    s.RollbackOnFailure,
		drain:       time.Duration(s.DrainTimeout),
		healthyTime: time.Duration(s.MinHealthyTime),
		upTimeout:   plan.UpTimeout,
		poll:        plan.Poll,
		lb:          plan.Balancer,
	}
	if r.drain <= 0 {
		r.drain = config.DefaultDrainTimeout
	}
	if r.upTimeout <= 0 {
		r.upTimeout = DefaultUpTimeout
	}
	if r.poll <= 0 {
		r.poll = DefaultPoll
	}
	return r
}

// batches cuts targets into batches of s.batch.
func (s *rolling) batches(targets []Target) [][]Target {
	var out [][]Target
	for i := 0; i < len(targets); i += s.batch {
		out = append(out, targets[i:min(i+s.batch, len(targets))])
	}
	return out
}

// memberName is t's name in the load balancer: its lb_name in drover.yml,
// else its name, else its address.
func memberName(t Target) string { return t.Host().MemberName() }

func (s *rolling) activate(ctx context.Context, r *run, rep *Report) {
	prev, ok := s.start(ctx, r, rep, s.rollback)
	if !ok {
		return
	}
	t := tally{failed: slices.Clone(s.prepFailed)}
	batches := s.batches(r.targets)
	stop := s.roll(ctx, r, rep, batches, 0, len(batches), &t, prev)
	s.finish(ctx, r, rep, &t, stop, prev)
}

// tally is what the batches of a rollout did so far.
type tally struct {
	failed []string // hosts that failed
	moved  []Target // hosts that run the release
}

// start checks the load balancer and, when hosts may have to be switched
// back (back, or min_healthy_time), asks each host what it runs now. It
// reports false when the rollout cannot start (rep.Err says why).
func (s *rolling) start(ctx context.Context, r *run, rep *Report, back bool) (map[string]string, bool) {
	rep.MaxFail = s.maxFail
	if s.lb != nil {
		if err := s.checkMembers(ctx, r); err != nil {
			rep.Err = err.Error()
			r.skipRest("activate")
			return nil, false
		}
	}
	if back || (s.lb != nil && s.healthyTime > 0) {
		return s.previous(ctx, r, rep), true
	}
	return nil, true
}

// roll runs batches one after another (numbered from first, of total) and
// returns why it stopped early, or "".
func (s *rolling) roll(ctx context.Context, r *run, rep *Report, batches [][]Target, first, total int, t *tally, prev map[string]string) string {
	for i, b := range batches {
		if total > 1 {
			r.obs.Phase(fmt.Sprintf("activate batch %d/%d", first+i+1, total))
		}
		if err := ctx.Err(); err != nil {
			return "interrupted: " + err.Error()
		}
		if err := s.checkHealthy(ctx, r, b); err != nil {
			return err.Error()
		}
		ok := make([]bool, len(b))
		var wg sync.WaitGroup
		for j, tg := range b {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ok[j] = s.node(ctx, r, rep, tg, prev[tg.Name()])
			}()
		}
		wg.Wait()
		for j, tg := range b {
			if ok[j] {
				t.moved = append(t.moved, tg)
			} else {
				t.failed = append(t.failed, tg.Name())
			}
		}
		if len(t.failed) > s.maxFail {
			return fmt.Sprintf("%d host(s) failed (%s), more than max_fail %d allows", len(t.failed), strings.Join(t.failed, ", "), s.maxFail)
		}
	}
	return ""
}

// finish writes the outcome: a note for failures within max_fail, or the
// stop, after switching the moved hosts back with rollback_on_failure.
func (s *rolling) finish(ctx context.Context, r *run, rep *Report, t *tally, stop string, prev map[string]string) {
	if stop == "" {
		if len(t.failed) > 0 {
			r.note(rep, "", fmt.Sprintf("%d host(s) failed within max_fail %d: %s; they run their previous release", len(t.failed), s.maxFail, strings.Join(t.failed, ", ")))
		}
		return
	}
	r.skipRest("activate")
	if ctx.Err() == nil && s.rollback && len(t.moved) > 0 {
		rep.Err = "the rollout stopped: " + stop + "; " + s.rollBack(ctx, r, rep, t.moved, prev)
		return
	}
	rep.Err = "the rollout stopped: " + stop + "; " + r.mixedSummary()
}

// checkMembers makes sure the load balancer answers and knows every host
// before any host is taken out.
func (s *rolling) checkMembers(ctx context.Context, r *run) error {
	members, err := s.lb.Members(ctx)
	if err != nil {
		return fmt.Errorf("cannot reach the load balancer, so no host was taken out or activated: %w; check load_balancer in drover.yml and that the load balancer is up, then run `drover resume %s`", err, r.plan.Env.Name)
	}
	var missing []string
	for _, t := range r.targets {
		if !slices.ContainsFunc(members, func(m lb.Member) bool { return m.Name == memberName(t) }) {
			missing = append(missing, fmt.Sprintf("%s (member %q)", t.Name(), memberName(t)))
		}
	}
	if len(missing) > 0 {
		names := make([]string, len(members))
		for i, m := range members {
			names[i] = m.Name
		}
		return fmt.Errorf("the load balancer has no member for %s (it has: %s), so no host was taken out or activated; name each host as the load balancer does (name or lb_name in drover.yml)", strings.Join(missing, ", "), strings.Join(names, ", "))
	}
	return nil
}

// previous asks every host what it runs before anything moves: where
// rollback_on_failure and a failed min_healthy_time send it back.
func (s *rolling) previous(ctx context.Context, r *run, rep *Report) map[string]string {
	out := map[string]string{}
	var mu sync.Mutex
	r.each(ctx, 0, func(ctx context.Context, t Target) {
		hr, err := t.Releases(ctx, r.call(t))
		mu.Lock()
		defer mu.Unlock()
		if err == nil && hr.Active != "" {
			out[t.Name()] = hr.Active
		} else if err != nil {
			r.note(rep, t.Name(), "could not ask what it runs now, so it cannot be switched back automatically: "+err.Error())
		}
	})
	return out
}

// checkHealthy refuses to take batch out when that would leave fewer than
// min_healthy serving hosts: as the load balancer sees them when there is
// one, else as this rollout knows them (only when min_healthy is set).
func (s *rolling) checkHealthy(ctx context.Context, r *run, batch []Target) error {
	names := make([]string, len(batch))
	for i, t := range batch {
		names[i] = t.Name()
	}
	if s.lb == nil {
		if !s.checkOwn {
			return nil
		}
		down := 0
		for _, t := range r.targets {
			res := r.result(t)
			if !slices.Contains(batch, t) && res.State != StateOK && res.State != StateSkipped && (res.Serving == nil || !res.Serving.Healthy) {
				down++
			}
		}
		if left := s.fleet - len(batch) - down; left < s.minHealthy {
			return fmt.Errorf("refusing to activate %s: that would leave %d of %d hosts serving, fewer than min_healthy %d", strings.Join(names, ", "), left, s.fleet, s.minHealthy)
		}
		return nil
	}
	members, err := s.lb.Members(ctx)
	if err != nil {
		return fmt.Errorf("cannot reach the load balancer before taking out %s: %w", strings.Join(names, ", "), err)
	}
	inBatch := func(m lb.Member) bool {
		return slices.ContainsFunc(batch, func(t Target) bool { return memberName(t) == m.Name })
	}
	serving := 0
	var notServing []string
	for _, m := range members {
		switch {
		case inBatch(m):
		case m.Serving():
			serving++
		default:
			notServing = append(notServing, describe(m))
		}
	}
	if serving < s.minHealthy {
		why := "no other member serves"
		if len(notServing) > 0 {
			why = "not serving: " + strings.Join(notServing, ", ")
		}
		return fmt.Errorf("refusing to take %s out of the load balancer: it sees %d other member(s) serving and min_healthy needs %d (%s); bring those members back or lower min_healthy", strings.Join(names, ", "), serving, s.minHealthy, why)
	}
	return nil
}

// describe is a member as a person reads it: its name and the load
// balancer's own word for its state.
func describe(m lb.Member) string {
	state := m.Detail
	if state == "" {
		switch {
		case !m.Enabled:
			state = "disabled"
		case !m.Healthy:
			state = "unhealthy"
		}
	}
	return fmt.Sprintf("%s (%s)", m.Name, state)
}

// node moves one host: drain, wait until idle, activate, re-enable, wait
// until UP, stay UP for min_healthy_time. A host whose activation failed
// was switched back by its engine and is re-enabled all the same. It
// reports whether the host ends on the release.
func (s *rolling) node(ctx context.Context, r *run, rep *Report, t Target, prev string) bool {
	if s.lb == nil {
		return r.activateOne(ctx, t, nil)
	}
	m := memberName(t)
	if err := s.out(ctx, r, rep, t, m); err != nil {
		r.fail(t, "drain", err)
		s.in(ctx, r, t, m) // it may have been drained before the error
		return false
	}
	ok := r.activateOne(ctx, t, nil)
	if err := s.in(ctx, r, t, m); err != nil {
		r.fail(t, "enable", err)
		return false
	}
	if !ok || s.healthyTime <= 0 {
		return ok
	}
	if err := s.stayUp(ctx, r, t, m); err != nil {
		r.fail(t, "min_healthy_time", err)
		if prev != "" {
			s.moveBack(ctx, r, rep, t, prev)
		}
		return false
	}
	return true
}

// out drains member m of t and waits until it is idle, at most
// drain_timeout; past it the rollout goes on and says so.
func (s *rolling) out(ctx context.Context, r *run, rep *Report, t Target, m string) error {
	if err := r.step(t, "drain", func() error { return s.lb.Drain(ctx, m) }); err != nil {
		return fmt.Errorf("drain %s in the load balancer: %w", m, err)
	}
	last, lastErr, err := s.watch(ctx, r, t, "wait idle", m, s.drain, lb.Member.Idle)
	if err == errTimeout {
		what := fmt.Sprintf("%d connection(s) still active", last.Active)
		if lastErr != nil {
			what = "the load balancer did not answer: " + lastErr.Error()
		} else if last.Active < 0 {
			what = "the load balancer still reports it draining"
		}
		r.note(rep, t.Name(), fmt.Sprintf("drain_timeout %s passed with %s; activated it anyway", s.drain, what))
		return nil
	}
	return err
}

// in enables member m of t and waits until the load balancer reports it
// serving. It runs even when the rollout is interrupted: a host is never
// left out of the load balancer by drover.
func (s *rolling) in(ctx context.Context, r *run, t Target, m string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.upTimeout+10*time.Second)
	defer cancel()
	if err := r.step(t, "enable", func() error { return s.lb.Enable(ctx, m) }); err != nil {
		return fmt.Errorf("enable %s in the load balancer: %w", m, err)
	}
	last, lastErr, err := s.watch(ctx, r, t, "wait up", m, s.upTimeout, lb.Member.Serving)
	if err == errTimeout {
		if lastErr != nil {
			return fmt.Errorf("the load balancer did not report %s UP within %s: %w", m, s.upTimeout, lastErr)
		}
		return fmt.Errorf("the load balancer did not report %s UP within %s: it says %s", m, s.upTimeout, describe(last))
	}
	return err
}

// stayUp watches member m for min_healthy_time: the load balancer must
// report it serving the whole time.
func (s *rolling) stayUp(ctx context.Context, r *run, t Target, m string) error {
	return r.step(t, "min_healthy_time", func() error {
		var bad error
		err := s.wait(ctx, s.healthyTime, func() bool {
			mem, err := s.member(ctx, m)
			switch {
			case err != nil:
				bad = fmt.Errorf("the load balancer did not answer: %w", err)
			case !mem.Serving():
				bad = fmt.Errorf("left service before min_healthy_time %s: the load balancer says %s", s.healthyTime, describe(mem))
			}
			return bad != nil
		})
		if bad != nil {
			return bad
		}
		if err == errTimeout {
			return nil // stayed up the whole time
		}
		return err
	})
}

// moveBack switches t back to release prev through the same steps: drain,
// wait idle, roll back, enable, wait UP.
func (s *rolling) moveBack(ctx context.Context, r *run, rep *Report, t Target, prev string) bool {
	ctx = context.WithoutCancel(ctx)
	m := memberName(t)
	if s.lb != nil {
		if err := s.out(ctx, r, rep, t, m); err != nil {
			r.fail(t, "rollback", err)
			s.in(ctx, r, t, m)
			return false
		}
	}
	var sv *release.Serving
	ok := r.do(ctx, t, "rollback", func(ctx context.Context, c Call) (err error) {
		sv, err = t.Rollback(ctx, c, prev)
		return err
	})
	res := r.result(t)
	if ok {
		r.mu.Lock()
		res.Release, res.Serving = sv.Release, sv
		if res.State == StateOK {
			res.Error = "switched back to " + prev
		}
		r.mu.Unlock()
	}
	if s.lb != nil {
		if err := s.in(ctx, r, t, m); err != nil {
			r.fail(t, "enable", err)
			ok = false
		}
	}
	r.obs.Done(t.Name(), res)
	return ok
}

// rollBack switches every host that moved back to what it ran before, in
// the rollout's batches and under the same min_healthy rule, and says what
// it did.
func (s *rolling) rollBack(ctx context.Context, r *run, rep *Report, moved []Target, prev map[string]string) string {
	r.obs.Phase("rollback")
	var back, failed, stuck []string
	for _, b := range s.batches(moved) {
		if err := s.checkHealthy(ctx, r, b); err != nil {
			for _, t := range b {
				stuck = append(stuck, t.Name())
			}
			r.note(rep, "", "rollback_on_failure stopped: "+err.Error())
			continue
		}
		ok := make([]bool, len(b))
		var wg sync.WaitGroup
		for j, t := range b {
			if prev[t.Name()] == "" {
				stuck = append(stuck, t.Name())
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ok[j] = s.moveBack(ctx, r, rep, t, prev[t.Name()])
			}()
		}
		wg.Wait()
		for j, t := range b {
			switch {
			case prev[t.Name()] == "":
			case ok[j]:
				back = append(back, t.Name()+" → "+prev[t.Name()])
			default:
				failed = append(failed, t.Name())
			}
		}
	}
	msg := "rollback_on_failure switched back " + strings.Join(back, ", ")
	if len(back) == 0 {
		msg = "rollback_on_failure switched no host back"
	}
	if len(failed) > 0 {
		msg += "; the rollback failed on " + strings.Join(failed, ", ")
	}
	if len(stuck) > 0 {
		msg += fmt.Sprintf("; %s still run %s", strings.Join(stuck, ", "), r.plan.ID)
	}
	return msg
}

// watch is step of t: it asks the load balancer about member m until ok
// holds, at most d (then errTimeout). It returns the last answer and the
// last error asking.
func (s *rolling) watch(ctx context.Context, r *run, t Target, step, m string, d time.Duration, ok func(lb.Member) bool) (last lb.Member, lastErr, err error) {
	err = r.step(t, step, func() error {
		return s.wait(ctx, d, func() bool {
			last, lastErr = s.member(ctx, m)
			return lastErr == nil && ok(last)
		})
	})
	return last, lastErr, err
}

// member is member m as the load balancer sees it now.
func (s *rolling) member(ctx context.Context, m string) (lb.Member, error) {
	members, err := s.lb.Members(ctx)
	if err != nil {
		return lb.Member{}, err
	}
	for _, x := range members {
		if x.Name == m {
			return x, nil
		}
	}
	return lb.Member{}, fmt.Errorf("%w: %s", lb.ErrUnknownMember, m)
}

// errTimeout is a wait that ran out of time.
var errTimeout = fmt.Errorf("timed out")

// wait calls done, then again after the poll interval (growing to
// MaxPoll), until it returns true (nil), d passes (errTimeout) or ctx ends
// (its error).
func (s *rolling) wait(ctx context.Context, d time.Duration, done func() bool) error {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	every := s.poll
	next := time.NewTimer(every)
	defer next.Stop()
	for {
		if done() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return errTimeout
		case <-next.C:
			every = min(every*3/2+time.Millisecond, max(MaxPoll, s.poll))
			next.Reset(every)
		}
	}
}

// step runs fn as a step of t that the observer sees start and end.
func (r *run) step(t Target, name string, fn func() error) error {
	start := time.Now()
	r.obs.Event(t.Name(), release.Event{Kind: release.EventStepStart, Step: name, Time: start})
	err := fn()
	ev := release.Event{Kind: release.EventStepEnd, Step: name, Elapsed: time.Since(start), Time: time.Now()}
	if err != nil && err != errTimeout {
		ev.Error = err.Error()
	}
	r.obs.Event(t.Name(), ev)
	return err
}

// fail records that t failed in phase, keeping an earlier error.
func (r *run) fail(t Target, phase string, err error) {
	res := r.result(t)
	r.mu.Lock()
	defer r.mu.Unlock()
	if res.State == StateOK || res.Error == "" {
		res.Error = err.Error()
	} else {
		res.Error += "; then " + err.Error()
	}
	res.State, res.Phase = StateFailed, phase
}
