package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/drover/drover/internal/agent"
	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/control"
	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/server"
	"github.com/drover/drover/internal/store"
)

// ServerOptions are the inputs of `drover server`.
type ServerOptions struct {
	Listen  string // default 127.0.0.1:8700
	Data    string // default ./drover-data
	DB      string // default sqlite at Data/drover.db
	TLSCert string
	TLSKey  string
	// MaxConns caps the connections served at once; JoinRate and
	// JoinRateTotal are the joins a second taken from one address and
	// from all. 0 keeps the server's default, a negative value lifts the
	// limit.
	MaxConns              int
	JoinRate, JoinRateTot float64
	// NodeTimeout, AllowCommands and RunnerName configure the rollouts
	// this server runs (control.RunnerOptions).
	NodeTimeout   time.Duration
	AllowCommands bool
	// Lease is the deploy lease's length (--deploy-lease; 0: the default).
	Lease      time.Duration
	RunnerName string
	IO         IO
	Logger     *slog.Logger
	// Ready, when set, receives the URL once the server listens (tests).
	Ready func(url string)
}

func (o *ServerOptions) dbURL() string {
	if o.DB != "" {
		return o.DB
	}
	return filepath.Join(o.data(), "drover.db")
}

func (o *ServerOptions) data() string {
	if o.Data == "" {
		return "drover-data"
	}
	return o.Data
}

// Serve runs the control server until ctx ends.
func Serve(ctx context.Context, o *ServerOptions) error {
	if o.Listen == "" {
		o.Listen = "127.0.0.1:8700"
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return &UsageError{errors.New("give both --tls-cert and --tls-key, or neither")}
	}
	if err := os.MkdirAll(o.data(), 0o700); err != nil {
		return err
	}
	st, err := store.Open(ctx, o.dbURL())
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer st.Close()
	tokenPath, err := server.EnsureAdminToken(ctx, st, o.data())
	if err != nil {
		return fmt.Errorf("admin token: %w", err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(o.IO.Err, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	srv := server.New(st, log)
	if o.MaxConns != 0 {
		srv.MaxConns = max(0, o.MaxConns)
	}
	if o.JoinRate != 0 {
		srv.JoinRate, srv.JoinBurst = max(0, o.JoinRate), max(1, int(10*o.JoinRate))
	}
	if o.JoinRateTot != 0 {
		srv.JoinRateTotal, srv.JoinBurstTotal = max(0, o.JoinRateTot), max(1, int(10*o.JoinRateTot))
	}
	if o.Lease != 0 {
		if err := lock.CheckLease(o.Lease); err != nil {
			return &UsageError{fmt.Errorf("--deploy-lease %s: %w", o.Lease, err)}
		}
	}
	srv.Lease = o.Lease
	srv.Runner = control.RunnerOptions{Name: o.RunnerName, NodeTimeout: o.NodeTimeout, AllowCommands: o.AllowCommands, Logger: log}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", o.Listen, err)
	}
	scheme := "http"
	var tlsConfig *tls.Config
	if o.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey)
		if err != nil {
			ln.Close()
			return fmt.Errorf("TLS certificate: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		scheme = "https"
	}
	ln = srv.Listener(ln, tlsConfig) // caps TCP connections, then TLS, then long-polls given back
	url := fmt.Sprintf("%s://%s", scheme, ln.Addr())
	fmt.Fprintf(o.IO.Out, "drover server listening on %s (store: %s)\n", url, st.Dialect())
	if tokenPath != "" {
		fmt.Fprintf(o.IO.Out, "first admin token written to %s\n", tokenPath)
	} else {
		fmt.Fprintf(o.IO.Out, "admin token: see %s\n", filepath.Join(o.data(), "admin.token"))
	}
	hs := srv.HTTPServer()
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	if o.Ready != nil {
		o.Ready(url)
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = hs.Shutdown(shutdown)
	srv.Close() // the long-polls parked off the http.Server
	return nil
}

// Migrate runs the store's schema migrations alone, or with printSQL prints
// the install SQL for a database administrator to run by hand.
func Migrate(ctx context.Context, o *ServerOptions, printSQL bool) error {
	if printSQL {
		t, err := store.ParseURL(o.dbURL())
		if err != nil {
			return &UsageError{err}
		}
		fmt.Fprint(o.IO.Out, store.SchemaSQL(t.Dialect))
		return nil
	}
	applied, err := store.Migrate(ctx, o.dbURL())
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintln(o.IO.Out, "schema is up to date")
	}
	for _, m := range applied {
		fmt.Fprintf(o.IO.Out, "applied %s\n", m)
	}
	return nil
}

// ClientOptions say which server to talk to.
type ClientOptions struct {
	Server string // --server or DROVER_SERVER
	Token  string // --token or DROVER_TOKEN
	CAFile string
	IO     IO
}

func (o *ClientOptions) client() (*api.Client, error) {
	srv, tok := o.Server, o.Token
	if srv == "" {
		srv = os.Getenv("DROVER_SERVER")
	}
	if tok == "" {
		tok = os.Getenv("DROVER_TOKEN")
	}
	if tok == "" {
		return nil, &UsageError{errors.New("no token: pass --token or set DROVER_TOKEN (the server wrote the first admin token to DATA/admin.token)")}
	}
	if strings.HasPrefix(tok, "@") {
		b, err := os.ReadFile(tok[1:])
		if err != nil {
			return nil, err
		}
		tok = strings.TrimSpace(string(b))
	}
	c, err := api.NewClient(srv, tok, o.CAFile)
	if err != nil {
		return nil, &UsageError{err}
	}
	return c, nil
}

// JoinTokenOptions are the inputs of `drover server join-token create`.
type JoinTokenOptions struct {
	ClientOptions
	TTL     time.Duration
	Apps    []string // apps the joining node may run; required unless AnyApp
	Envs    []string // environments it may run them in; empty: any
	AnyApp  bool     // allow every app, said explicitly
	Replace string   // node name the token may take over
	Note    string
}

// JoinTokenCreate prints a new one-time join token for agents, scoped to
// the apps and environments given.
func JoinTokenCreate(ctx context.Context, o *JoinTokenOptions) error {
	if len(o.Apps) == 0 && !o.AnyApp {
		return &UsageError{errors.New("name the apps the joining node may run (--app shop, repeatable or comma-separated), or pass --any-app to allow every app")}
	}
	if len(o.Apps) > 0 && o.AnyApp {
		return &UsageError{errors.New("--app and --any-app contradict each other: give one")}
	}
	c, err := o.client()
	if err != nil {
		return err
	}
	tok, err := c.CreateJoinToken(ctx, api.CreateJoinToken{TTL: o.TTL.String(), Apps: o.Apps, Envs: o.Envs, AnyApp: o.AnyApp, Replace: o.Replace, Note: o.Note})
	if err != nil {
		return err
	}
	if o.IO.Output == "json" {
		return o.IO.JSON(tok)
	}
	fmt.Fprintln(o.IO.Out, tok.Token)
	return nil
}

// ReleaseList prints the server's releases of an app.
func ReleaseList(ctx context.Context, o *ClientOptions, app, env string) error {
	c, err := o.client()
	if err != nil {
		return err
	}
	rels, err := c.Releases(ctx, app, env)
	if err != nil {
		return err
	}
	if o.IO.Output == "json" {
		return o.IO.JSON(rels)
	}
	tw := tabwriter.NewWriter(o.IO.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAPP\tENV\tSPEC\tCOMMIT\tCREATED\tBY\tNOTE")
	for _, r := range rels {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.App, r.Env, r.Spec, short(r.Commit), r.CreatedAt.UTC().Format(time.RFC3339), r.CreatedBy, r.Note)
	}
	return tw.Flush()
}

// StatusOptions are the inputs of `drover status`.
type StatusOptions struct {
	ClientOptions
	App, Env string
	Watch    bool
	Interval time.Duration
}

// Status prints every node of an app: release, upgrade status, step, age,
// last seen; stale nodes are flagged. With Watch it redraws until ctx ends.
func Status(ctx context.Context, o *StatusOptions) error {
	c, err := o.client()
	if err != nil {
		return err
	}
	for {
		nodes, err := c.Status(ctx, o.App, o.Env)
		if err != nil {
			return err
		}
		if o.IO.Output == "json" {
			if err := o.IO.JSON(nodes); err != nil {
				return err
			}
		} else {
			envs, err := envStatus(ctx, c, o.App, o.Env, nodes)
			if err != nil {
				return err
			}
			if o.Watch && o.IO.IsTTY {
				fmt.Fprint(o.IO.Out, "\x1b[H\x1b[2J")
			}
			printStatus(o.IO, nodes)
			printEnvStatus(o.IO.Out, envs)
		}
		if !o.Watch {
			return nil
		}
		interval := o.Interval
		if interval == 0 {
			interval = 2 * time.Second
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

func printStatus(io IO, nodes []api.NodeStatus) {
	tw := tabwriter.NewWriter(io.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tAPP\tENV\tRELEASE\tSTATUS\tSTEP\tAGE\tLAST SEEN\tNOTE")
	now := time.Now()
	for _, n := range nodes {
		note := n.Error
		if n.Stale {
			note = strings.TrimSpace("STALE " + note)
		}
		rel := n.Release
		if rel == "" {
			rel = "-"
		}
		since := "-"
		if !n.Since.IsZero() {
			since = age(now.Sub(n.Since))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s ago\t%s\n", n.Node, n.App, n.Env, rel, n.Status, n.Step, since, age(now.Sub(n.LastSeen)), note)
	}
	tw.Flush()
}

// Nodes prints every registered node.
func Nodes(ctx context.Context, o *ClientOptions, app string) error {
	return Status(ctx, &StatusOptions{ClientOptions: *o, App: app})
}

// AgentOptions are the inputs of `drover agent`.
type AgentOptions struct {
	Config  string
	Once    bool
	Version string
	IO      IO
}

// errUpgradeFailed is what --once returns when an upgrade failed.
var errUpgradeFailed = errors.New("an upgrade failed")

// Agent runs the pull agent: a daemon that follows the server, or one check
// with --once (for cron; exit 1 when an upgrade failed).
func Agent(ctx context.Context, o *AgentOptions) error {
	cfg, err := config.LoadAgent(o.Config)
	if err != nil {
		return err
	}
	if cfg.PlainHTTP() {
		fmt.Fprintf(o.IO.Err, "warning: %s: server %s is plain http over the network: the node token and the releases this node deploys can be read and changed on the way; use https:// (drover server --tls-cert/--tls-key, ca_file here)\n", cfg.Path, cfg.Server)
	}
	a := &agent.Agent{Config: cfg, Version: o.Version, Logger: slog.New(slog.NewTextHandler(o.IO.Err, nil))}
	if o.Once {
		res, err := a.Once(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(o.IO.Out, "upgraded %d, failed %d\n", res.Upgraded, res.Failed)
		if res.Failed > 0 {
			return errUpgradeFailed
		}
		return nil
	}
	return a.Run(ctx)
}
