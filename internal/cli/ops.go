package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/progress"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/service"
	"github.com/drover/drover/internal/transport"
)

// Releases lists every host's releases: active, prepared, failed, pinned,
// with commit and age.
func Releases(ctx context.Context, o *Common) error {
	return withHosts(ctx, o, func(e *env, nodes []*transport.Node) error {
		hosts := rollout.Releases(ctx, e.plan, transport.Targets(nodes))
		if o.IO.Output == "json" {
			return o.IO.JSON(hosts)
		}
		now := time.Now()
		tw := tabwriter.NewWriter(o.IO.Out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "HOST\tRELEASE\tSTATUS\tCOMMIT\tSPEC\tAGE\tNOTE")
		failed := 0
		for _, h := range hosts {
			if h.Error != "" {
				failed++
				fmt.Fprintf(tw, "%s\t-\tunreachable\t-\t-\t-\t%s\n", h.Host, h.Error)
				continue
			}
			if len(h.Releases) == 0 {
				fmt.Fprintf(tw, "%s\t-\t(none)\t-\t-\t-\t\n", h.Host)
			}
			for _, r := range h.Releases {
				status := string(r.Status)
				if r.ID == h.Active {
					status = "active"
				} else if r.Status == release.StatusActive {
					status = "good"
				}
				var notes []string
				if r.Hotfix {
					notes = append(notes, "hotfix")
				}
				if r.Pinned(now) {
					notes = append(notes, "pinned until "+r.KeepUntil.UTC().Format("2006-01-02 15:04"))
				}
				if r.ID == h.Target {
					notes = append(notes, "rollback target")
				}
				if r.FailedStep != "" && r.Status == release.StatusFailed {
					notes = append(notes, "failed in "+r.FailedStep)
				}
				if r.Status == release.StatusPreparing || r.Status == release.StatusActivating {
					notes = append(notes, "interrupted? `drover resume`")
				}
				if r.Status == release.StatusUnknown {
					notes = append(notes, "not in the host's record; cleanup keeps it unless named with --remove")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.Host, r.ID, status, short(r.Commit), r.Spec, age(now.Sub(r.CreatedAt)), strings.Join(notes, "; "))
			}
		}
		tw.Flush()
		printPaused(ctx, o.IO, e, nodes)
		if failed > 0 {
			return fmt.Errorf("%d hosts did not answer", failed)
		}
		return nil
	})
}

func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// CleanupOptions are the inputs of `drover cleanup`.
type CleanupOptions struct {
	Common
	Keep   int    // default keep_releases
	Remove string // remove this one release by ID instead (unknown ones included)
}

// Cleanup removes old and failed releases on every host beyond keep,
// never the active one, the rollback target or a pinned one.
func Cleanup(ctx context.Context, o *CleanupOptions) error {
	return withHosts(ctx, &o.Common, func(e *env, nodes []*transport.Node) error {
		if o.Remove != "" {
			if err := release.CheckID(o.Remove); err != nil {
				return &UsageError{err}
			}
		}
		resps := transport.Each(ctx, e.plan, nodes, func(r *node.Request) {
			r.Op, r.Keep, r.ID, r.Holder = node.OpCleanup, o.Keep, o.Remove, holder(e, "cleanup")
		}, nil)
		return report(o.IO, nodes, resps, func(name string, r *node.Response) string {
			if len(r.Removed) == 0 {
				return "nothing to remove"
			}
			return "removed " + strings.Join(r.Removed, ", ")
		})
	})
}

// holder is who a command that changes hosts is, for the deploy lock each
// host takes for the length of the command: a deploy that comes meanwhile
// is told who holds it and what for.
func holder(e *env, verb string) *lock.Holder {
	return &lock.Holder{Owner: e.plan.By, PID: os.Getpid(), Command: "drover " + verb + " " + e.env.Name}
}

// report prints one line per host and fails when any host failed.
func report(io IO, nodes []*transport.Node, resps []*node.Response, ok func(string, *node.Response) string) error {
	if io.Output == "json" {
		out := map[string]*node.Response{}
		for i, t := range nodes {
			out[t.Name()] = resps[i]
		}
		if err := io.JSON(out); err != nil {
			return err
		}
	}
	failed := 0
	for i, t := range nodes {
		name, r := t.Name(), resps[i]
		if !r.OK {
			failed++
			if io.Output != "json" {
				fmt.Fprintf(io.Out, "%s: FAILED: %s\n", name, r.Error)
			}
			continue
		}
		if io.Output != "json" {
			if line := ok(name, r); line != "" {
				fmt.Fprintf(io.Out, "%s: %s\n", name, line)
			}
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d hosts failed", failed, len(nodes))
	}
	return nil
}

// ExecOptions are the inputs of `drover exec`.
type ExecOptions struct {
	Common
	// Args are the words after --. One word is a shell command line, as
	// with `ssh HOST 'CMD'`; several are an argv that reaches the host
	// intact, each word one argument, nothing expanded.
	Args []string
}

// command is what the host's shell runs for args.
func (o *ExecOptions) command() string {
	if len(o.Args) == 1 {
		return o.Args[0]
	}
	quoted := make([]string, len(o.Args))
	for i, a := range o.Args {
		quoted[i] = shellQuote(a)
	}
	return strings.Join(quoted, " ")
}

// shellQuote makes s one word for sh, taken literally.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Exec runs a command in the current release on every selected host,
// output prefixed by host.
func Exec(ctx context.Context, o *ExecOptions) error {
	return withHosts(ctx, &o.Common, func(e *env, nodes []*transport.Node) error {
		single := len(nodes) == 1
		var mu = make(chan struct{}, 1)
		resps := transport.Each(ctx, e.plan, nodes, func(r *node.Request) { r.Op, r.Command, r.Holder = node.OpExec, o.command(), holder(e, "exec") },
			func(host string, ev release.Event) {
				if ev.Kind != release.EventOutput {
					return
				}
				line := ev.Line
				if o.IO.IsTTY {
					// A person reads it: no host may retitle or clear their terminal.
					line = progress.Clean(line)
				}
				mu <- struct{}{}
				if single {
					fmt.Fprintln(o.IO.Out, line)
				} else {
					fmt.Fprintf(o.IO.Out, "[%s] %s\n", host, line)
				}
				<-mu
			})
		return report(o.IO, nodes, resps, func(string, *node.Response) string { return "" })
	})
}

// ServiceOptions are the inputs of `drover service`.
type ServiceOptions struct {
	Common
	Action  string
	Service string
	Port    int
}

// Service starts, stops, restarts or shows the app's services on every host.
func Service(ctx context.Context, o *ServiceOptions) error {
	e, err := loadEnv(&o.Common)
	if err != nil {
		return err
	}
	switch o.Action {
	case "start", "stop", "restart", "status":
	default:
		return &UsageError{fmt.Errorf("unknown action %q; use start, stop, restart or status", o.Action)}
	}
	set, err := e.open(ctx, &o.Common)
	if err != nil {
		return err
	}
	defer set.Close()
	resps := transport.Each(ctx, e.plan, set.Nodes, func(r *node.Request) {
		r.Op, r.Action, r.Service, r.Port = node.OpService, o.Action, o.Service, o.Port
		r.Holder = holder(e, "service "+o.Action)
	}, nil)
	if o.IO.Output == "json" {
		return report(o.IO, set.Nodes, resps, nil)
	}
	tw := tabwriter.NewWriter(o.IO.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tSERVICE\tPORT\tPID\tSTATE\tRELEASE")
	failed := 0
	var notes []string // socket services: supervisor, listeners
	for i, t := range set.Nodes {
		r := resps[i]
		if !r.OK {
			failed++
			fmt.Fprintf(tw, "%s\t-\t-\t-\tFAILED: %s\t\n", t.Name(), r.Error)
			continue
		}
		for _, p := range r.Processes {
			state := "stopped"
			if p.Running {
				state = "running"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", t.Name(), p.Service, p.Port, p.PID, state, p.ReleaseDir)
			if line := socketLine(p); line != "" {
				notes = append(notes, fmt.Sprintf("%s %s port %d: %s", t.Name(), p.Service, p.Port, line))
			}
		}
	}
	tw.Flush()
	for _, n := range notes {
		fmt.Fprintln(o.IO.Out, n)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d hosts failed", failed, len(set.Nodes))
	}
	return nil
}

// socketLine says, for a process of a socket service, who holds its socket,
// which processes listen on it and whether a restart is under way; the
// empty string for other services.
func socketLine(p service.Process) string {
	sup := p.Supervisor
	if sup == nil {
		return ""
	}
	if p.Unit != "" { // a systemd service: its .socket unit holds the sockets
		if len(sup.Sockets) > 0 {
			return fmt.Sprintf("%s, listening on %s", sup.State, strings.Join(sup.Sockets, ", "))
		}
		return sup.State
	}
	var b strings.Builder
	switch {
	case sup.Running:
		fmt.Fprintf(&b, "socket held by supervisor pid %d", sup.PID)
		if len(sup.Sockets) > 0 {
			fmt.Fprintf(&b, " (%s)", strings.Join(sup.Sockets, " "))
		}
	case sup.PID != 0:
		fmt.Fprintf(&b, "supervisor pid %d %s: the socket is not held; `drover service start` or the next deploy starts a new one", sup.PID, sup.State)
	default:
		b.WriteString("no supervisor: the socket is not held")
	}
	pids := make([]string, len(p.Listeners))
	for i, pid := range p.Listeners {
		pids[i] = strconv.Itoa(pid)
	}
	switch {
	case len(pids) == 0:
		b.WriteString("; no process listens")
	default:
		fmt.Fprintf(&b, "; listening: pid %s", strings.Join(pids, ", "))
	}
	if p.Orphan {
		b.WriteString("; the process was started by a supervisor that is gone: `drover service restart` replaces it")
	}
	if p.NewPID != 0 {
		fmt.Fprintf(&b, "; new process pid %d from %s not yet healthy (a restart is under way or was interrupted)", p.NewPID, p.NewReleaseDir)
	}
	return b.String()
}

// Tasks lists the hooks, services and commands an app defines (fab -l).
func Tasks(o *Common) error {
	file := o.File
	if file == "" {
		file = config.DefaultFile
	}
	app, err := config.Load(file)
	if err != nil {
		return err
	}
	if o.IO.Output == "json" {
		return o.IO.JSON(map[string]any{"hooks": app.Hooks, "hook_order": app.HookOrder, "services": app.Services, "environments": app.Environments})
	}
	w := o.IO.Out
	fmt.Fprintf(w, "app %s, deployed to %s, keeping %d releases\n\nHooks (run in the new release dir, in this order):\n", app.App, app.DeployTo, app.KeepReleases)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, stage := range []string{config.StagePrepare, config.StageBeforeActivate, config.StageAfterActivate} {
		for _, h := range app.HooksFor(stage) {
			where := "every host"
			if h.Role != "" {
				where = "hosts with role " + h.Role
			}
			if h.RunOnce {
				where = "once per rollout, on one host"
				if h.Role != "" {
					where += " with role " + h.Role
				}
			}
			if h.SkipsOnHotfix() {
				where += "; not on --hotfix"
			}
			// Cleaned: the file may come from a commit someone else wrote.
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", progress.Clean(h.Name), stage, progress.Clean(where), progress.Clean(strings.Join(h.Commands, " && ")))
		}
	}
	tw.Flush()
	fmt.Fprintln(w, "\nServices:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, name := range app.ServiceNames() {
		s := app.Services[name]
		what := s.Start
		if s.Systemd != "" {
			what = "systemd unit " + s.Systemd
		}
		ports := "-"
		if len(s.Ports) > 0 {
			ports = strings.Trim(strings.Join(strings.Fields(fmt.Sprint(s.Ports)), ","), "[]")
		}
		health := "-"
		if s.Health != nil {
			health = s.Health.HTTP + s.Health.Command
		}
		fmt.Fprintf(tw, "  %s\tports %s\t%s\thealth %s\trestart: %s\n", name, ports, what, health, service.Spec{Systemd: s.Systemd, Socket: s.Socket, ReusePort: s.ReusePort}.RestartKind())
	}
	tw.Flush()
	fmt.Fprintln(w, "\nEnvironments:")
	for _, name := range app.EnvironmentNames() {
		env := app.Environments[name]
		var hosts []string
		for _, h := range env.Hosts {
			hosts = append(hosts, fmt.Sprintf("%s%v", h.Name, h.Roles))
		}
		fmt.Fprintf(w, "  %s: branch %s, %s, hosts %s\n", name, env.Branch, env.Strategy.Type, strings.Join(hosts, " "))
	}
	fmt.Fprintln(w, "\nCommands: deploy, prepare, activate, rollback, resume, releases, cleanup, exec, service, lock, unlock (drover help COMMAND)")
	return nil
}

// NodeServe runs one node request from stdin (`drover node serve`).
//
// Its stdout is the deployer's SSH channel (or pipe): when the deployer is
// killed or its connection drops, writing there fails. That must not kill
// the step in progress (a half-run migration is the worst outcome), so a
// broken pipe is an error the server handles, not a fatal SIGPIPE, and the
// SIGHUP a vanishing session may bring is ignored. SIGINT and SIGTERM, which
// only a deliberate cancel sends, still stop the work.
func NodeServe(ctx context.Context, version string) error {
	// Notify, not Ignore: an ignored signal stays ignored in the hooks and
	// services this process starts; a caught one is reset on exec.
	swallow := make(chan os.Signal, 1)
	signal.Notify(swallow, syscall.SIGPIPE, syscall.SIGHUP)
	defer signal.Stop(swallow)
	ctx, stop := signal.NotifyContext(context.WithoutCancel(ctx), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s := &node.Server{Version: version, CrashAt: os.Getenv("DROVER_CRASH_AT")}
	return s.Serve(ctx, os.Stdin, os.Stdout)
}

// SuperviseOptions are the inputs of `drover node supervise`.
type SuperviseOptions struct {
	PIDsDir string
	Service string
}

// NodeSupervise runs the supervisor of a socket service until it is told to
// exit (`drover node supervise`).
func NodeSupervise(ctx context.Context, o *SuperviseOptions) error {
	return service.Supervise(ctx, service.SupervisorConfig{PIDsDir: o.PIDsDir, Service: o.Service})
}
