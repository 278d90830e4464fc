// Package cli holds what drover's commands do, one function per command,
// each taking an options struct that cmd/drover fills from flags. Output
// respects the terminal: live progress on a TTY, plain lines when piped,
// JSON with -o json.
package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/progress"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/source"
	"github.com/drover/drover/internal/transport"
)

// Exit codes.
const (
	ExitOK     = 0
	ExitFailed = 1 // a host failed
	ExitUsage  = 2 // bad input: flags, drover.yml, version spec
)

// UsageError is bad input; drover exits 2 for it.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// ExitCode maps an error from a command to drover's exit code.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ue *UsageError
	var ce *config.Error
	var ces config.Errors
	if errors.As(err, &ue) || errors.As(err, &ce) || errors.As(err, &ces) || errors.Is(err, source.ErrBadSpec) {
		return ExitUsage
	}
	return ExitFailed
}

// IO is where a command reads and writes.
type IO struct {
	In     io.Reader
	Out    io.Writer
	Err    io.Writer
	IsTTY  bool
	Output string // "" (human) or "json"
}

// StdIO returns the process's standard streams.
func StdIO(output string) IO {
	return IO{In: os.Stdin, Out: os.Stdout, Err: os.Stderr, IsTTY: term.IsTerminal(int(os.Stdout.Fd())), Output: output}
}

// JSON writes v as indented JSON.
func (s IO) JSON(v any) error {
	enc := json.NewEncoder(s.Out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Common are the options every environment command shares.
type Common struct {
	File      string // drover.yml; default ./drover.yml
	Env       string
	Hosts     []string // only these hosts (names)
	Role      string   // only hosts with this role
	Transport transport.Options
	IO        IO
}

// env is a loaded drover.yml and one of its environments.
type env struct {
	app  *config.File
	env  *config.Environment
	plan *rollout.Plan
}

func loadEnv(c *Common) (*env, error) {
	file := c.File
	if file == "" {
		file = config.DefaultFile
	}
	app, err := config.Load(file)
	if err != nil {
		return nil, err
	}
	e, ok := app.Environments[c.Env]
	if !ok {
		return nil, &UsageError{fmt.Errorf("%s: no environment %q; it has: %s", file, c.Env, strings.Join(app.EnvironmentNames(), ", "))}
	}
	if len(c.Hosts) > 0 || c.Role != "" {
		filtered := *e
		filtered.Hosts = nil
		for _, h := range e.Hosts {
			if (len(c.Hosts) == 0 || slices.Contains(c.Hosts, h.Name)) && h.HasRole(c.Role) {
				filtered.Hosts = append(filtered.Hosts, h)
			}
		}
		if len(filtered.Hosts) == 0 {
			return nil, &UsageError{fmt.Errorf("no host of %s matches --host %v --role %q", c.Env, c.Hosts, c.Role)}
		}
		e = &filtered
	}
	plan := &rollout.Plan{App: app, Env: e, By: rollout.Deployer(), Strategy: e.Strategy, Fleet: len(app.Environments[c.Env].Hosts), Parallel: e.Strategy.Parallel}
	return &env{app: app, env: e, plan: plan}, nil
}

// open reaches every host of the environment; any unreachable host is an
// error naming each one with its transport error.
func (e *env) open(ctx context.Context, c *Common) (*transport.Set, error) {
	set, errs := transport.Open(ctx, e.env.Hosts, c.Transport)
	if len(errs) > 0 {
		set.Close()
		msgs := make([]string, len(errs))
		for i, he := range errs {
			msgs[i] = he.Error()
		}
		return nil, fmt.Errorf("cannot reach %d of %d hosts, nothing was changed:\n  %s", len(errs), len(e.env.Hosts), strings.Join(msgs, "\n  "))
	}
	return set, nil
}

// withHosts loads the environment, reaches every host, runs fn and closes
// the connections.
func withHosts(ctx context.Context, c *Common, fn func(e *env, nodes []*transport.Node) error) error {
	e, err := loadEnv(c)
	if err != nil {
		return err
	}
	set, err := e.open(ctx, c)
	if err != nil {
		return err
	}
	defer set.Close()
	return fn(e, set.Nodes)
}

// resolve turns the spec into a commit once, from a mirror of the repo kept
// on this machine, before any host is touched.
func resolve(ctx context.Context, app *config.File, specText string) (source.Spec, string, error) {
	spec, err := source.ParseSpec(specText)
	if err != nil {
		return spec, "", err
	}
	m := &source.Mirror{Dir: mirrorDir(app.Repo), URL: app.Repo}
	unlock, err := lockMirror(m.Dir)
	if err != nil {
		return spec, "", err
	}
	defer unlock()
	if err := m.Fetch(ctx); err != nil {
		return spec, "", fmt.Errorf("resolve %s: %w", spec, err)
	}
	commit, err := m.Resolve(ctx, spec)
	if err != nil {
		return spec, "", fmt.Errorf("resolve %s: %w", spec, err)
	}
	return spec, commit, nil
}

// atCommit makes e deploy commit as that commit describes itself: hooks,
// services, shared paths and keep_releases come from the drover.yml in the
// commit, hosts and where the app lives from the deployer's file. Only the
// part taken from the commit is validated (config.ParseCode), so a release
// whose environments section today's drover refuses can still be rolled
// back to. A commit whose drover.yml is missing or invalid is an error that
// names it. An empty commit (a release the hosts know only by its
// directory, after their state was rebuilt) leaves e as it is: each host
// then reads the release's own drover.yml from its directory.
func (e *env) atCommit(ctx context.Context, commit string) error {
	if commit == "" {
		return nil
	}
	m := &source.Mirror{Dir: mirrorDir(e.app.Repo), URL: e.app.Repo}
	unlock, err := lockMirror(m.Dir)
	if err != nil {
		return err
	}
	defer unlock()
	if err := m.Ensure(ctx, commit); err != nil {
		return fmt.Errorf("read drover.yml of commit %s: %w", short(commit), err)
	}
	name := config.DefaultFile + "@" + short(commit)
	data, err := m.ReadFile(ctx, commit, config.DefaultFile)
	if err != nil {
		return &config.Error{File: name, Msg: fmt.Sprintf("commit %s has no drover.yml at the root of %s, so drover does not know its hooks; nothing was deployed. Deploy a commit that has one", commit, e.app.Repo)}
	}
	code, err := config.ParseCode(name, data)
	if err != nil {
		return fmt.Errorf("the drover.yml of commit %s is invalid; nothing was deployed. Fix it in a new commit and deploy that:\n%w", commit, err)
	}
	e.app = e.app.AtCommit(code)
	e.plan.App = e.app
	return nil
}

// lockMirror takes an exclusive flock on the mirror dir's lock file
// (dir.lock), so that drover commands run at once on one machine (two CI
// jobs creating releases) do not break each other's git init and fetch in
// the shared cache; the returned function releases it.
func lockMirror(dir string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("repository mirror cache: %w", err)
	}
	f, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("repository mirror cache: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("repository mirror cache: lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

func mirrorDir(url string) string {
	dir := os.Getenv("XDG_CACHE_HOME")
	if dir == "" {
		if home, err := os.UserHomeDir(); err == nil {
			dir = filepath.Join(home, ".cache")
		} else {
			dir = os.TempDir()
		}
	}
	sum := sha256.Sum256([]byte(url))
	return filepath.Join(dir, "drover", "mirrors", hex.EncodeToString(sum[:8])+".git")
}

// observe runs fn with a progress renderer and returns what it returned
// after printing the summary (or the JSON report).
func observe(c *Common, e *env, id string, fn func(rollout.Observer) (*rollout.Report, error)) (*rollout.Report, error) {
	var logw io.Writer
	logf, lerr := progress.LogFile(e.app.App, e.env.Name, id)
	if lerr == nil {
		defer logf.Close()
		logw = logf
	}
	names := make([]string, len(e.env.Hosts))
	for i, h := range e.env.Hosts {
		names[i] = h.Name
	}
	out := c.IO.Err
	tty := c.IO.IsTTY
	if c.IO.Output != "json" {
		out = c.IO.Out
	} else {
		tty = false
	}
	r := progress.New(out, tty, logw, names)
	rep, err := fn(r)
	r.Close()
	if rep == nil {
		return nil, err
	}
	if c.IO.Output == "json" {
		_ = c.IO.JSON(rep)
	} else {
		fmt.Fprintln(c.IO.Out)
		progress.Summary(c.IO.Out, rep)
		if logf != nil {
			fmt.Fprintf(c.IO.Out, "full log: %s\n", logf.Name())
		}
	}
	if err != nil || !rep.OK() {
		// The summary said what failed and what to do.
		return rep, errReported
	}
	return rep, nil
}

// errReported is a failure already shown in the summary.
var errReported = errors.New("deploy failed")

// IsReported reports whether err was already shown to the user in full.
func IsReported(err error) bool { return errors.Is(err, errReported) }

func newID(commit string) string { return release.NewID(time.Now(), commit) }
