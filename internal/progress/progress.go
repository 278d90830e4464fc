// Package progress shows a rollout to a person: a live line per host on a
// terminal, plain host-prefixed lines when piped, a summary table at the
// end, each failure with its host, step and last lines of output, and the
// full log in a file. Both renderers are fed by the same rollout events.
package progress

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
)

// Renderer implements rollout.Observer.
type Renderer struct {
	out   io.Writer
	tty   bool
	log   io.Writer // full log, may be nil
	hosts []string

	mu     sync.Mutex
	phase  string
	state  map[string]*hostLine
	drawn  int
	ticker *time.Ticker
	stop   chan struct{}
	done   chan struct{}
}

type hostLine struct {
	step    string
	started time.Time
	result  string
	elapsed time.Duration
	last    string
}

// New returns a renderer for hosts writing to out. With tty it redraws a
// live line per host; otherwise it prints plain lines prefixed by host.
// Every event also goes to log when it is not nil.
func New(out io.Writer, tty bool, log io.Writer, hosts []string) *Renderer {
	r := &Renderer{out: out, tty: tty, log: log, hosts: hosts, state: map[string]*hostLine{}}
	for _, h := range hosts {
		r.state[h] = &hostLine{}
	}
	if tty {
		r.stop, r.done = make(chan struct{}), make(chan struct{})
		r.ticker = time.NewTicker(200 * time.Millisecond)
		go r.loop()
	}
	return r
}

func (r *Renderer) loop() {
	defer close(r.done)
	for {
		select {
		case <-r.stop:
			return
		case <-r.ticker.C:
			r.mu.Lock()
			r.redraw()
			r.mu.Unlock()
		}
	}
}

// Close stops the live display, leaving its last frame on screen.
func (r *Renderer) Close() {
	if r.tty {
		r.ticker.Stop()
		close(r.stop)
		<-r.done
		r.mu.Lock()
		r.redraw()
		r.drawn = 0
		r.mu.Unlock()
	}
}

func (r *Renderer) logf(format string, args ...any) {
	if r.log != nil {
		fmt.Fprintf(r.log, time.Now().UTC().Format("15:04:05.000 ")+format+"\n", args...)
	}
}

// Phase implements rollout.Observer.
func (r *Renderer) Phase(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.phase = name
	r.logf("== %s", name)
	if !r.tty {
		fmt.Fprintf(r.out, "== %s\n", name)
	}
}

// Event implements rollout.Observer.
func (r *Renderer) Event(host string, ev release.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	hl := r.state[host]
	if hl == nil {
		hl = &hostLine{}
		r.state[host] = hl
		r.hosts = append(r.hosts, host)
	}
	switch ev.Kind {
	case release.EventStepStart:
		hl.step, hl.started, hl.result, hl.last = ev.Step, time.Now(), "", ""
		r.logf("[%s] %s: start", host, ev.Step)
		if !r.tty {
			fmt.Fprintf(r.out, "[%s] %s ...\n", host, ev.Step)
		}
	case release.EventStepEnd:
		res := "ok"
		if ev.Error != "" {
			res = "FAILED: " + ev.Error
		}
		hl.result, hl.elapsed = res, ev.Elapsed
		r.logf("[%s] %s: %s (%s)", host, ev.Step, res, ev.Elapsed.Round(time.Millisecond))
		if !r.tty {
			fmt.Fprintf(r.out, "[%s] %s %s (%s)\n", host, ev.Step, res, ev.Elapsed.Round(time.Millisecond))
		}
	default:
		hl.last = ev.Line
		r.logf("[%s] %s | %s", host, ev.Step, ev.Line)
		if !r.tty {
			fmt.Fprintf(r.out, "[%s] | %s\n", host, ev.Line)
		}
	}
}

// Done implements rollout.Observer.
func (r *Renderer) Done(host string, res *rollout.HostResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logf("[%s] %s: %s %s", host, res.Phase, res.State, res.Error)
	if hl := r.state[host]; hl != nil {
		hl.result = res.Phase + " " + res.State
	}
	if !r.tty {
		line := fmt.Sprintf("[%s] %s %s", host, res.Phase, res.State)
		if res.Error != "" {
			line += ": " + res.Error
		}
		fmt.Fprintln(r.out, line)
	}
}

func (r *Renderer) redraw() {
	if r.drawn > 0 {
		fmt.Fprintf(r.out, "\x1b[%dA", r.drawn)
	}
	width := 0
	for _, h := range r.hosts {
		width = max(width, len(h))
	}
	for _, h := range r.hosts {
		hl := r.state[h]
		var what string
		switch {
		case hl.step == "":
			what = "waiting"
		case hl.result == "":
			what = fmt.Sprintf("%-16s %6.1fs", hl.step, time.Since(hl.started).Seconds())
			if hl.last != "" {
				what += "  " + truncate(hl.last, 60)
			}
		default:
			what = fmt.Sprintf("%-16s %s", hl.step, truncate(hl.result, 70))
		}
		fmt.Fprintf(r.out, "\x1b[2K%-*s  %-9s %s\n", width, h, r.phase, what)
	}
	r.drawn = len(r.hosts)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

// Summary prints the final table and, for each failed host, its step and
// the last lines of its output.
func Summary(w io.Writer, rep *rollout.Report) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tRESULT\tPHASE\tRELEASE\tPREPARE\tACTIVATE")
	hosts := slices.Clone(rep.Hosts)
	for _, h := range hosts {
		rel := h.Release
		if rel == "" {
			rel = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", h.Host, h.State, h.Phase, rel, dur(h.Prepare), dur(h.Activate))
	}
	tw.Flush()
	for _, h := range hosts {
		if h.State == rollout.StateOK || h.State == rollout.StateSkipped {
			continue
		}
		step := h.Step
		if step == "" {
			step = h.Phase
		}
		fmt.Fprintf(w, "\n%s failed in %s: %s\n", h.Host, step, h.Error)
		for _, l := range h.Tail {
			fmt.Fprintf(w, "  %s | %s\n", h.Host, l)
		}
	}
	if rep.Err != "" {
		fmt.Fprintf(w, "\n%s\n", rep.Err)
	}
}

func dur(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(10 * time.Millisecond).String()
}

// LogFile opens a new log file for a rollout under the user's state
// directory ($XDG_STATE_HOME/drover/logs or ~/.local/state/drover/logs).
func LogFile(app, env, id string) (*os.File, error) {
	dir := os.Getenv("XDG_STATE_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, err
		}
		dir = filepath.Join(home, ".local", "state")
	}
	dir = filepath.Join(dir, "drover", "logs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	name := strings.Join([]string{app, env, id}, "-") + ".log"
	return os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
}
