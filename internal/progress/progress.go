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
	"unicode/utf8"

	"github.com/drover/drover/internal/config"
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
	// What a host sends reaches a person's terminal and the log, which
	// people cat: no escape sequence of its own may pass.
	host, step, line, errText := Clean(host), Clean(ev.Step), Clean(ev.Line), Clean(ev.Error)
	hl := r.state[host]
	if hl == nil {
		hl = &hostLine{}
		r.state[host] = hl
		r.hosts = append(r.hosts, host)
	}
	switch ev.Kind {
	case release.EventStepStart:
		hl.step, hl.started, hl.result, hl.last = step, time.Now(), "", ""
		r.logf("[%s] %s: start", host, step)
		if !r.tty {
			fmt.Fprintf(r.out, "[%s] %s ...\n", host, step)
		}
	case release.EventStepEnd:
		res := "ok"
		if errText != "" {
			res = "FAILED: " + errText
		}
		hl.result, hl.elapsed = res, ev.Elapsed
		r.logf("[%s] %s: %s (%s)", host, step, res, ev.Elapsed.Round(time.Millisecond))
		if !r.tty {
			fmt.Fprintf(r.out, "[%s] %s %s (%s)\n", host, step, res, ev.Elapsed.Round(time.Millisecond))
		}
	default:
		hl.last = line
		r.logf("[%s] %s | %s", host, step, line)
		if !r.tty {
			fmt.Fprintf(r.out, "[%s] | %s\n", host, line)
		}
	}
}

// Done implements rollout.Observer.
func (r *Renderer) Done(host string, res *rollout.HostResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	host, errText := Clean(host), Clean(res.Error)
	r.logf("[%s] %s: %s %s", host, res.Phase, res.State, errText)
	if hl := r.state[host]; hl != nil {
		hl.result = res.Phase + " " + res.State
	}
	if !r.tty {
		line := fmt.Sprintf("[%s] %s %s", host, res.Phase, res.State)
		if errText != "" {
			line += ": " + errText
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

// truncate shortens s to n runes, never cutting one in half.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

// Summary prints the final table, for each failed host its step and the
// last lines of its output, and what the rollout left out: the run_once
// hooks --skip named, and what --hotfix skipped.
func Summary(w io.Writer, rep *rollout.Report) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tRESULT\tPHASE\tRELEASE\tPREPARE\tACTIVATE")
	hosts := slices.Clone(rep.Hosts)
	for _, h := range hosts {
		rel := h.Release
		if rel == "" {
			rel = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", Clean(h.Host), h.State, h.Phase, Clean(rel), dur(h.Prepare), dur(h.Activate))
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
		host := Clean(h.Host)
		fmt.Fprintf(w, "\n%s failed in %s: %s\n", host, Clean(step), Clean(h.Error))
		for _, l := range h.Tail {
			fmt.Fprintf(w, "  %s | %s\n", host, Clean(l))
		}
	}
	if len(rep.SkippedHooks) > 0 || rep.SkippedCleanup != "" {
		fmt.Fprintln(w)
	}
	var hotfix []string
	for _, h := range rep.SkippedHooks {
		if h.Reason == rollout.ReasonHotfix {
			hotfix = append(hotfix, "hook "+Clean(h.Hook))
			continue
		}
		role := ""
		if h.Role != "" {
			role = ", role " + h.Role
		}
		fmt.Fprintf(w, "skipped run_once hook %s (%s%s): --skip %s\n", h.Hook, h.Stage, role, h.Hook)
	}
	if len(rep.Notes) > 0 {
		fmt.Fprintln(w)
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "note: %s\n", Clean(n))
	}
	if rep.Window > 0 && rep.Strategy == config.StrategyAllAtOnce {
		fmt.Fprintf(w, "\nactivation window (first switch to last): %s\n", rep.Window.Round(time.Microsecond))
	}
	if rep.SkippedCleanup == rollout.ReasonHotfix {
		hotfix = append(hotfix, "cleanup")
	}
	if len(hotfix) > 0 {
		fmt.Fprintf(w, "skipped for --hotfix: %s\n", strings.Join(hotfix, ", "))
	}
	if rep.Err != "" {
		fmt.Fprintf(w, "\n%s\n", Clean(rep.Err))
	}
}

func dur(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(10 * time.Millisecond).String()
}

// LogFile opens a new log file for a rollout under the user's state
// directory ($XDG_STATE_HOME/drover/logs or ~/.local/state/drover/logs),
// readable by its owner only (0600, in a 0700 directory).
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
	// Hook output can hold what only the deployer may read (a secret
	// printed by mistake, a connection string): the logs are private,
	// also when an older drover made them readable.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	name := strings.Join([]string{app, env, id}, "-") + ".log"
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
