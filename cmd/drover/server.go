package main

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/cli"
	"github.com/drover/drover/internal/server"
)

func newServerCmd(g *globals) *cobra.Command {
	o := &cli.ServerOptions{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control server: HTTP API for agents, people and CI; SQLite by default",
		Long: `server runs drover's control server. With no setup it keeps its data in
an SQLite file under --data and writes the first admin token to
DATA/admin.token (mode 0600). --db selects PostgreSQL (several replicas
may share one) or MySQL/MariaDB. Schema migrations run on start.

The server rolls out every release created on it (drover release create)
across the agents of its environment, one rollout per environment at a
time, with the strategy of the drover.yml sent with the release. A
rollout whose server died is taken over by another replica (or this
server after a restart) once its lease lapses.`,
		Example: `  drover server --listen 127.0.0.1:8700 --data /var/lib/drover-server
  drover server --db postgres://drover:secret@db:5432/drover --listen :8700
  drover server --tls-cert server.crt --tls-key server.key`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.IO = cli.StdIO(g.output)
			return cli.Serve(cmd.Context(), o)
		},
	}
	f := cmd.PersistentFlags()
	f.StringVar(&o.Listen, "listen", "127.0.0.1:8700", "address to listen on")
	f.StringVar(&o.Data, "data", "drover-data", "directory for the SQLite file and the first admin token")
	f.StringVar(&o.DB, "db", "", "database URL: postgres://..., mysql://user:pass@tcp(host:3306)/db (default SQLite in --data)")
	cmd.Flags().StringVar(&o.TLSCert, "tls-cert", "", "TLS certificate (PEM)")
	cmd.Flags().StringVar(&o.TLSKey, "tls-key", "", "TLS private key (PEM)")
	cmd.Flags().IntVar(&o.MaxConns, "max-conns", server.DefaultMaxConns, "connections served at once (agents hold one each); -1: no cap")
	cmd.Flags().Float64Var(&o.JoinRate, "join-rate", server.DefaultJoinRate, "agent joins a second taken from one address (bursts of 10x); -1: no limit")
	cmd.Flags().DurationVar(&o.NodeTimeout, "node-timeout", 2*time.Minute, "a node that does not pick up or report on its rollout task for this long fails it (counted against max_fail)")
	cmd.Flags().BoolVar(&o.AllowCommands, "allow-commands", false, "let rollouts run shell commands on this server (a command load balancer, a canary check command); refused otherwise")
	cmd.Flags().StringVar(&o.RunnerName, "runner-name", "", "name this server shows as the runner of its rollouts (default hostname:pid)")
	cmd.Flags().Float64Var(&o.JoinRateTot, "join-rate-total", server.DefaultJoinRateTotal, "agent joins a second taken from all addresses (bursts of 10x); -1: no limit")

	var printSQL bool
	migrate := &cobra.Command{
		Use:   "migrate",
		Short: "Run the store's schema migrations and exit",
		Example: `  drover server migrate --db mysql://drover:secret@tcp(127.0.0.1:3306)/drover
  drover server migrate --data /var/lib/drover-server
  drover server migrate --db postgres://admin@db/drover --print-sql > install.sql`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.IO = cli.StdIO(g.output)
			return cli.Migrate(cmd.Context(), o, printSQL)
		},
	}
	migrate.Flags().BoolVar(&printSQL, "print-sql", false, "print the schema SQL for the --db dialect instead (for a DBA to run)")
	cmd.AddCommand(migrate)
	jt := &cobra.Command{Use: "join-token", Short: "Manage one-time join tokens for agents"}
	jo := &cli.JoinTokenOptions{}
	create := &cobra.Command{
		Use:   "create",
		Short: "Print a new one-time join token, scoped to the apps a node may run",
		Long: `create prints a one-time join token. The node that joins with it, and the
agent token it receives, may act only on the apps named with --app (and
the environments named with --env; any environment when none is named).
--any-app allows every app and must be said explicitly.

A join token cannot take over the name of a node that is joined (its agent
token is live). To replace a machine, make the token with --replace NODE:
the new node joins under that name and the old node's tokens are revoked.`,
		Example: `  drover server join-token create --app shop --env production --server http://127.0.0.1:8700 --token @drover-data/admin.token
  drover server join-token create --app shop,blog --ttl 24h
  drover server join-token create --app shop --env production --replace web3
  drover server join-token create --any-app`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			jo.IO = cli.StdIO(g.output)
			return cli.JoinTokenCreate(cmd.Context(), jo)
		},
	}
	clientFlags(create, &jo.ClientOptions)
	create.Flags().DurationVar(&jo.TTL, "ttl", time.Hour, "how long the token may be used")
	create.Flags().StringSliceVar(&jo.Apps, "app", nil, "app the joining node may run (repeatable, or comma-separated)")
	create.Flags().StringSliceVar(&jo.Envs, "env", nil, "environment it may run them in (repeatable, or comma-separated; default any)")
	create.Flags().BoolVar(&jo.AnyApp, "any-app", false, "allow every app (instead of --app)")
	create.Flags().StringVar(&jo.Replace, "replace", "", "node name this token may take over; the old node's tokens are revoked when it joins")
	create.Flags().StringVar(&jo.Note, "note", "", "a note kept with the token")
	jt.AddCommand(create)
	cmd.AddCommand(jt)
	return cmd
}

// clientFlags adds --server and --token for commands that talk to a server.
func clientFlags(cmd *cobra.Command, o *cli.ClientOptions) {
	cmd.Flags().StringVar(&o.Server, "server", "", "server URL (default $DROVER_SERVER)")
	cmd.Flags().StringVar(&o.Token, "token", "", "admin token, or @FILE (default $DROVER_TOKEN)")
	cmd.Flags().StringVar(&o.CAFile, "ca-file", "", "CA bundle for the server's TLS certificate")
}

func newReleaseCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "release", Short: "Create and list releases on the control server"}
	o := &cli.ReleaseCreateOptions{}
	create := &cobra.Command{
		Use:   "create APP ENV SPEC",
		Short: "Record a release and roll it out to the agents of APP/ENV",
		Long: `create records a release on the control server and queues its rollout:
the server rolls it out to the agents of APP/ENV with the strategy of
drover.yml at the release's commit (read from the repository here and sent
along), one rollout per environment at a time, in FIFO order. Nodes outside
the rollout, and nodes that join meanwhile, stay on the last completed
release.

It prints the rollout's place in the queue and returns; --wait follows the
rollout to its end with per-node progress and exits 1 unless it succeeded.`,
		Example: `  drover release create shop production tag:v1.2 --note "fixes checkout"
  drover release create shop staging branch:staging --repo git@github.com:acme/shop.git
  drover release create shop production tag:v1.3 --wait
  drover release create shop production tag:v1.3 --strategy canary --supersede
  drover release create shop production tag:v1.3.1 --hotfix --skip migrate`,
		Args: exactArgs(3, "an app, an environment and a version spec"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.IO = cli.StdIO(g.output)
			o.App, o.Env, o.Spec = args[0], args[1], args[2]
			return cli.ReleaseCreate(cmd.Context(), o)
		},
	}
	clientFlags(create, &o.ClientOptions)
	create.Flags().StringVar(&o.Note, "note", "", "a note kept with the release")
	create.Flags().StringVar(&o.Repo, "repo", "", "repository to resolve the spec in (default: drover.yml's repo)")
	create.Flags().StringVar(&o.Strategy, "strategy", "", "all-at-once, rolling or canary instead of drover.yml's strategy")
	create.Flags().BoolVar(&o.NoWait, "no-wait", false, "fail at once, recording nothing, when another rollout of the environment runs or waits")
	create.Flags().BoolVar(&o.Supersede, "supersede", false, "replace older queued rollouts of the environment (never a running one)")
	create.Flags().BoolVar(&o.Hotfix, "hotfix", false, "code only: skip hooks marked hotfix: skip")
	create.Flags().StringSliceVar(&o.Skip, "skip", nil, "run_once hook not to run (repeatable)")
	create.Flags().BoolVar(&o.Wait, "wait", false, "follow the rollout to its end; exit 1 unless it succeeded")
	lo := &cli.ClientOptions{}
	list := &cobra.Command{
		Use:     "list APP [ENV]",
		Short:   "List an app's releases, newest first",
		Example: "  drover release list shop production -o json",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			lo.IO = cli.StdIO(g.output)
			env := ""
			if len(args) == 2 {
				env = args[1]
			}
			return cli.ReleaseList(cmd.Context(), lo, args[0], env)
		},
	}
	clientFlags(list, lo)
	cmd.AddCommand(create, list)
	return cmd
}

func newStatusCmd(g *globals) *cobra.Command {
	o := &cli.StatusOptions{}
	cmd := &cobra.Command{
		Use:   "status APP [ENV]",
		Short: "Every node of APP: release, upgrade status, step, last seen; the lock, queue and running rollout",
		Long: `status prints every node of APP (in ENV): the release it runs, its latest
upgrade's status and step, when it was last seen (stale nodes flagged);
then, per environment, who holds the deploy lock, the queue, and the
running rollout's per-node progress. -o json prints the nodes only, as
before; drover rollouts APP ENV -o json has the rollouts.`,
		Example: `  drover status shop production --watch
  drover status shop -o json`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.IO = cli.StdIO(g.output)
			o.App = args[0]
			if len(args) == 2 {
				o.Env = args[1]
			}
			return cli.Status(cmd.Context(), o)
		},
	}
	clientFlags(cmd, &o.ClientOptions)
	cmd.Flags().BoolVarP(&o.Watch, "watch", "w", false, "redraw every --interval until interrupted")
	cmd.Flags().DurationVar(&o.Interval, "interval", 2*time.Second, "refresh period with --watch")
	return cmd
}

func newNodesCmd(g *globals) *cobra.Command {
	o := &cli.ClientOptions{}
	cmd := &cobra.Command{
		Use:     "nodes [APP]",
		Short:   "List the nodes registered with the control server",
		Example: "  drover nodes\n  drover nodes shop -o json",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.IO = cli.StdIO(g.output)
			app := ""
			if len(args) == 1 {
				app = args[0]
			}
			return cli.Nodes(cmd.Context(), o, app)
		},
	}
	clientFlags(cmd, o)
	return cmd
}

func newAgentCmd(g *globals) *cobra.Command {
	o := &cli.AgentOptions{}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "On a node: keep its apps at the release the control server says",
		Long: `agent follows the control server: it long-polls for the desired release
of each app in its config, upgrades through the release engine, and
reports every step. --once checks once and exits (for cron): exit 0 when
nothing failed, 1 when an upgrade failed.`,
		Example: `  drover agent --config /etc/drover/agent.yml
  */5 * * * * drover agent --config /etc/drover/agent.yml --once`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.IO = cli.StdIO(g.output)
			o.Version = Version
			return cli.Agent(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.Config, "config", "/etc/drover/agent.yml", "agent configuration file")
	cmd.Flags().BoolVar(&o.Once, "once", false, "check once and exit")
	return cmd
}
