package main

import (
	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/cli"
)

func newReleasesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "releases ENV",
		Short: "List each host's releases, newest first as the host recorded them: active, prepared, failed, pinned, unknown, with commit and age",
		Example: `  drover releases production
  drover releases production -o json`,
		Args: exactArgs(1, "an environment"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := g.common(cmd, args[0])
			return cli.Releases(cmd.Context(), &c)
		},
	}
}

func newCleanupCmd(g *globals) *cobra.Command {
	o := &cli.CleanupOptions{}
	cmd := &cobra.Command{
		Use:   "cleanup ENV",
		Short: "Remove old and failed releases beyond keep_releases, never the active, previous or a pinned one",
		Example: `  drover cleanup production
  drover cleanup staging --keep 2
  drover cleanup production --remove 20261122T101500Z-3f9c2ab   # one release by name, even an unknown one`,
		Args: exactArgs(1, "an environment"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Common = g.common(cmd, args[0])
			return cli.Cleanup(cmd.Context(), o)
		},
	}
	cmd.Flags().IntVar(&o.Keep, "keep", 0, "good releases to keep (default keep_releases)")
	cmd.Flags().StringVar(&o.Remove, "remove", "", "remove this one release (by ID) from every host that has it, whatever its status; a host where it is active refuses")
	return cmd
}

func newExecCmd(g *globals) *cobra.Command {
	o := &cli.ExecOptions{}
	return &cobra.Command{
		Use:   "exec ENV -- COMMAND...",
		Short: "Run a command in the current release on the hosts of ENV, with DROVER_* set",
		Long: `exec runs a command in the current release directory of every selected host.
Several words after -- are one argument each, exactly as typed; a single word
is a shell command line (pipes, &&, $VARS work), as with ssh HOST 'CMD'.`,
		Example: `  drover exec staging -- ./manage.py showmigrations
  drover exec production --role db -- ./manage.py migrate --plan
  drover exec staging -- 'tail -n 50 log/app.log | grep ERROR'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return &usageFlagError{err: errExecArgs}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Common = g.common(cmd, args[0])
			o.Args = args[1:]
			return cli.Exec(cmd.Context(), o)
		},
	}
}

func newServiceCmd(g *globals) *cobra.Command {
	o := &cli.ServiceOptions{}
	cmd := &cobra.Command{
		Use:   "service start|stop|restart|status ENV [NAME]",
		Short: "Start, stop, restart or show the app's services on the hosts of ENV",
		Example: `  drover service status production
  drover service restart staging web --port 8001
  drover service stop staging worker`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 || len(args) > 3 {
				return &usageFlagError{err: errServiceArgs}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Common = g.common(cmd, args[1])
			o.Action = args[0]
			if len(args) == 3 {
				o.Service = args[2]
			}
			return cli.Service(cmd.Context(), o)
		},
	}
	cmd.Flags().IntVar(&o.Port, "port", 0, "only the process on this port")
	return cmd
}

func newTasksCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "tasks",
		Short:   "List the hooks, services and environments this app defines",
		Example: "  drover tasks\n  drover tasks -f deploy/drover.yml -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := g.common(cmd, "")
			return cli.Tasks(&c)
		},
	}
}

func newLockCmd(g *globals, take bool) *cobra.Command {
	o := &cli.LockOptions{}
	cmd := &cobra.Command{
		Use:     "lock ENV",
		Short:   "Hold the deploy lock of ENV on every host until 'drover unlock'",
		Example: `  drover lock production --reason "db maintenance"`,
		Args:    exactArgs(1, "an environment"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Common = g.common(cmd, args[0])
			if take {
				return cli.Lock(cmd.Context(), o)
			}
			return cli.Unlock(cmd.Context(), o)
		},
	}
	if take {
		cmd.Flags().StringVar(&o.Reason, "reason", "", "why, shown to anyone who tries to deploy")
	} else {
		cmd.Use, cmd.Short = "unlock ENV", "Free the deploy lock of ENV on every host, whoever holds it"
		cmd.Example = "  drover unlock production"
	}
	return cmd
}

func newNodeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "The release engine's own verbs, run on a host by push mode or the agent",
		Long: `drover node is what a deployer runs on each host. 'drover node serve' reads
one JSON request on stdin and answers with JSON lines on stdout.`,
		Hidden: true,
	}
	cmd.AddCommand(&cobra.Command{
		Use:     "serve",
		Short:   "Run one request from stdin against this host's release engine",
		Example: `  echo '{"protocol":1,"op":"ping"}' | drover node serve`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.NodeServe(cmd.Context(), Version)
		},
	})
	var sup cli.SuperviseOptions
	supCmd := &cobra.Command{
		Use:   "supervise --pids DIR --service NAME",
		Short: "Hold the listening sockets of a socket service across releases (started by drover)",
		Long: `drover node supervise is the small long-lived process drover starts, in its own
session, for each service with socket: true. It holds the service's listening
sockets and starts the service's processes on them (LISTEN_FDS, LISTEN_PID,
LISTEN_FDNAMES), as asked on its control socket DIR/NAME.sock. Exits on SIGTERM
or when drover stops the service; the processes it started keep running.`,
		Example: `  drover node supervise --pids /srv/shop/shared/pids --service web`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cli.NodeSupervise(cmd.Context(), &sup)
		},
	}
	supCmd.Flags().StringVar(&sup.PIDsDir, "pids", "", "the app's shared/pids directory")
	supCmd.Flags().StringVar(&sup.Service, "service", "", "the service whose sockets to hold")
	_ = supCmd.MarkFlagRequired("pids")
	_ = supCmd.MarkFlagRequired("service")
	cmd.AddCommand(supCmd)
	return cmd
}
