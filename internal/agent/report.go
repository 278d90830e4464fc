package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/release"
)

// Limits on what the agent sends about an upgrade. The server reads request
// bodies of at most 1 MiB (internal/server's maxBody); a report never comes
// near it, however much the hooks print.
const (
	maxLine    = 4 << 10   // one line of output; the rest is cut with a marker
	maxStepLog = 64 << 10  // the end of each step's log
	maxError   = 8 << 10   // the upgrade's error text
	maxReport  = 768 << 10 // one report, as JSON
)

// clipLine bounds one line of output to maxLine bytes, saying how much was
// cut.
func clipLine(s string) string {
	if len(s) <= maxLine {
		return s
	}
	keep := maxLine
	for keep > 0 && !utf8.RuneStart(s[keep]) {
		keep--
	}
	return fmt.Sprintf("%s … [truncated %d bytes]", s[:keep], len(s)-keep)
}

// clipError bounds an error text to maxError bytes, keeping its start and
// its end.
func clipError(s string) string {
	if len(s) <= maxError {
		return s
	}
	head, tail := maxError/2, len(s)-maxError/2
	for head > 0 && !utf8.RuneStart(s[head]) {
		head--
	}
	for tail < len(s) && !utf8.RuneStart(s[tail]) {
		tail++
	}
	return fmt.Sprintf("%s … [truncated %d bytes] … %s", s[:head], tail-head, s[tail:])
}

// stepLog is the end of one step's output: whole lines, at most
// maxStepLog bytes, and how many bytes before them were dropped.
type stepLog struct {
	lines   []string
	size    int
	dropped int
}

// add appends a line, already bounded (clipLine, clipError).
func (l *stepLog) add(line string) {
	line += "\n"
	l.lines = append(l.lines, line)
	l.size += len(line)
	for l.size > maxStepLog && len(l.lines) > 1 {
		l.size -= len(l.lines[0])
		l.dropped += len(l.lines[0])
		l.lines = l.lines[1:]
	}
}

// text is the log as the server keeps it: the last lines that fit in
// limit bytes (the last line always, unless limit is negative), after a
// line saying how much was left out.
func (l *stepLog) text(limit int) string {
	dropped, start, size := l.dropped, 0, l.size
	for start < len(l.lines) && size > limit && (limit < 0 || start < len(l.lines)-1) {
		size -= len(l.lines[start])
		dropped += len(l.lines[start])
		start++
	}
	var b strings.Builder
	if dropped > 0 {
		fmt.Fprintf(&b, "… [truncated %d bytes of earlier output]\n", dropped)
	}
	for _, line := range l.lines[start:] {
		b.WriteString(line)
	}
	return b.String()
}

// reporter sends an upgrade's steps to the server as they happen. The
// server appends what is new to each step's log, so a step's log is sent
// once, whole, when the step has ended (a running step goes without it),
// and a step the server took is not sent again. A send that fails is not
// fatal: the next one carries every step not taken yet. Every report stays
// under the server's body limit (see maxReport).
type reporter struct {
	agent  *Agent
	client *api.Client // the connection the upgrade was recorded on
	id     int64

	mu      sync.Mutex
	state   string
	step    string
	err     string // the upgrade's error, once it ended
	serving string // the engine release this node serves after the work (final report)
	ended   bool   // end was called: only finish sends from then on
	steps   []api.Step
	logs    []*stepLog // beside steps
	taken   []bool     // beside steps: the server has the ended step and its log

	sendMu sync.Mutex
}

func (r *reporter) event(ev release.Event) {
	r.mu.Lock()
	switch ev.Kind {
	case release.EventStepStart:
		r.step = ev.Step
		r.steps = append(r.steps, api.Step{Name: ev.Step, Status: "running", Started: ev.Time})
		r.logs = append(r.logs, &stepLog{})
		r.taken = append(r.taken, false)
	case release.EventStepEnd:
		if i := r.find(ev.Step); i >= 0 {
			s := &r.steps[i]
			s.Status, s.Elapsed = "ok", ev.Elapsed
			if ev.Error != "" {
				s.Status = "failed"
				r.logs[i].add("error: " + clipError(ev.Error))
			}
		}
	case release.EventOutput, release.EventInfo:
		if i := r.find(ev.Step); i >= 0 {
			r.logs[i].add(clipLine(ev.Line))
		}
	}
	end := ev.Kind == release.EventStepEnd || ev.Kind == release.EventStepStart
	r.mu.Unlock()
	if end {
		go func() { _ = r.send(context.Background(), 5*time.Second, false) }()
	}
}

func (r *reporter) find(step string) int {
	for i := len(r.steps) - 1; i >= 0; i-- {
		if r.steps[i].Name == step {
			return i
		}
	}
	return -1
}

func (r *reporter) status(ctx context.Context, s string) {
	r.mu.Lock()
	r.state = s
	r.mu.Unlock()
	_ = r.send(ctx, 5*time.Second, false)
}

// snapshot is the report to send now and the steps in it that ended: the
// steps the server has not taken yet, each ended one with the end of its
// log, cut shorter until the whole report is under maxReport bytes as
// JSON. The logs of steps that succeeded shrink first, those of failed
// steps last.
func (r *reporter) snapshot() (api.Report, []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := api.Report{Status: r.state, Step: r.step, Error: r.err, Serving: r.serving}
	var in, ended []int
	for i, s := range r.steps {
		if r.taken[i] {
			continue
		}
		in = append(in, i)
		rep.Steps = append(rep.Steps, s)
		if s.Status != "running" {
			ended = append(ended, i)
		}
	}
	okLimit, failLimit := maxStepLog, maxStepLog
	for {
		for j, i := range in {
			switch rep.Steps[j].Status {
			case "running":
			case "failed":
				rep.Steps[j].Log = r.logs[i].text(failLimit)
			default:
				rep.Steps[j].Log = r.logs[i].text(okLimit)
			}
		}
		b, err := json.Marshal(rep)
		if err != nil || len(b) <= maxReport || failLimit < 0 {
			return rep, ended
		}
		switch {
		case okLimit > 0:
			okLimit /= 2
		case failLimit > 0:
			failLimit /= 2
		default: // only markers are left
			okLimit, failLimit = -1, -1
		}
	}
}

// send reports the upgrade now; a send that is not final does nothing once
// the upgrade ended, so that only finish reports the end.
func (r *reporter) send(ctx context.Context, timeout time.Duration, final bool) error {
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	r.mu.Lock()
	ended := r.ended
	r.mu.Unlock()
	if ended && !final {
		return nil
	}
	rep, steps := r.snapshot()
	if !final && (rep.Status == api.StatusSucceeded || rep.Status == api.StatusFailed) {
		// The upgrade ended since the check above: finish reports it.
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := r.client.Report(ctx, r.id, rep); err != nil {
		return err
	}
	r.mu.Lock()
	for _, i := range steps {
		r.taken[i] = true
	}
	r.mu.Unlock()
	return nil
}

// end records how the upgrade ended; every report sent after it says so.
func (r *reporter) end(err error) {
	if err != nil {
		r.endWith(false, clipError(strings.TrimSpace(err.Error())))
		return
	}
	r.endWith(true, "")
}

// endWith records that the upgrade ended, well or with error text msg.
func (r *reporter) endWith(ok bool, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.state, r.err, r.ended = api.StatusSucceeded, "", true
	if !ok {
		r.state, r.err = api.StatusFailed, msg
	}
}

// errText is the upgrade's error as reported, once it ended.
func (r *reporter) errText() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// serve records the engine release this node serves after the work, for
// the final report.
func (r *reporter) serve(id string) {
	r.mu.Lock()
	r.serving = id
	r.mu.Unlock()
}

// heartbeat reports the upgrade every period until the returned stop is
// called, even when no step changed: the server counts a node that stops
// reporting as failed. stop waits for the last send to end.
func (r *reporter) heartbeat(ctx context.Context, period time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := r.send(ctx, 5*time.Second, false); err != nil && ctx.Err() == nil {
					r.agent.log().Debug("heartbeat report failed; the next one carries the same", "upgrade", r.id, "err", err)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// finish sends the final report, retrying while the server is away, until
// it is taken, the server refuses it for good (a 4xx other than 408 and
// 429), ctx ends (one last attempt is made then) or deadline passes (zero:
// none).
func (r *reporter) finish(ctx context.Context, deadline time.Time) {
	log := r.agent.log().With("upgrade", r.id)
	for attempt := 1; ; attempt++ {
		// Each attempt gets its own time even when the agent is stopping,
		// so a finished upgrade is reported once more before exiting.
		e := r.send(context.WithoutCancel(ctx), 10*time.Second, true)
		switch {
		case e == nil:
			if attempt > 1 {
				log.Info("upgrade reported")
			}
			return
		case attempt > 1 && api.IsStatus(e, http.StatusConflict):
			// An attempt whose answer was lost had been taken.
			log.Info("upgrade reported")
			return
		case isFinal(e):
			log.Error("the server refused the upgrade's report; it is dropped", "err", e)
			return
		case ctx.Err() != nil:
			log.Warn("the upgrade was not reported (the agent is stopping or a newer upgrade began); the server learns the running release from the next hello", "err", e)
			return
		case !deadline.IsZero() && time.Now().After(deadline):
			log.Error("gave up reporting the upgrade; the server learns the running release at the next contact", "err", e)
			return
		case attempt == 1:
			log.Warn("cannot report the upgrade; retrying until the server is back", "err", e)
		}
		wait, cancel := ctx, context.CancelFunc(func() {})
		if !deadline.IsZero() {
			wait, cancel = context.WithDeadline(ctx, deadline)
		}
		r.agent.sleep(wait, attempt)
		cancel()
	}
}

// isFinal reports whether err is an answer that asking again cannot change:
// a 4xx other than 408 (timeout) and 429 (too many requests).
func isFinal(err error) bool {
	var se *api.StatusError
	return errors.As(err, &se) && se.Code >= 400 && se.Code < 500 && se.Code != 408 && se.Code != 429
}
