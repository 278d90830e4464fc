package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/cli"
	"github.com/drover/drover/internal/lock"
)

func newDeployCmd(g *globals, verb string) *cobra.Command {
	o := &cli.DeployOptions{}
	var days float64
	cmd := &cobra.Command{
		Use:   verb + " ENV",
		Short: "Push a release to every host of ENV over SSH: prepare everywhere, then activate",
		Long:  "Push a release to every host of ENV over SSH: prepare everywhere, then activate.\n\n" + serverQueue,
		Example: `  drover deploy staging                      # the tip of branch staging
  drover deploy production --version tag:v1.2
  drover deploy production --version commit:3f9c2ab --strategy serial --parallel 10
  drover deploy production --role web --skip migrate   # web hosts only, without the db migration
  drover deploy production --hotfix          # code only: no hook marked hotfix: skip, no cleanup`,
		Args: exactArgs(1, "an environment"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Common = g.common(cmd, args[0])
			o.KeepFor = keepDays(days)
			var err error
			if verb == "prepare" {
				_, err = cli.Prepare(cmd.Context(), o)
			} else {
				_, err = cli.Deploy(cmd.Context(), o)
			}
			return err
		},
	}
	if verb == "prepare" {
		cmd.Short = "Prepare a release on every host of ENV without activating it"
		cmd.Long = cmd.Short + ".\n\n" + serverQueue
		cmd.Example = `  drover prepare production                 # then: drover activate production RELEASE
  drover prepare staging --keep-days 10     # a private release cleanup keeps for 10 days
  drover prepare production --hotfix        # activating it later skips what a hotfix skips`
		cmd.Flags().Float64Var(&days, "keep-days", 0, "keep the release this many days, whatever cleanup does")
	}
	f := cmd.Flags()
	f.StringVar(&o.Version, "version", "", "version spec: branch:NAME, tag:NAME or commit:SHA (default branch:<env's branch>)")
	f.StringVar(&o.Strategy, "strategy", "", "all-at-once (default; also two-phase), rolling, serial or canary")
	f.IntVar(&o.Parallel, "parallel", 0, "hosts prepared at once (default all)")
	f.StringVar(&o.Export, "export", "", "how to write a commit into a release: archive or checkout")
	f.BoolVar(&o.Hotfix, "hotfix", false, "deploy code only: hooks marked hotfix: skip in drover.yml and cleanup do not run (resume and activate of the release keep it)")
	leaseFlag(cmd, &o.Lease)
	noWaitFlag(cmd, &o.NoWait)
	skipFlag(cmd, o)
	return cmd
}

// skipFlag adds --skip HOOK: without it, a run_once hook that no selected
// host may run (--host, --role) refuses the deploy.
func skipFlag(cmd *cobra.Command, o *cli.DeployOptions) {
	cmd.Flags().StringArrayVar(&o.Skip, "skip", nil, "do not run this run_once hook (repeatable); needed when no selected host has its role")
}

func newActivateCmd(g *globals) *cobra.Command {
	o := &cli.DeployOptions{}
	cmd := &cobra.Command{
		Use:     "activate ENV RELEASE",
		Short:   "Activate a release that every host of ENV has prepared",
		Example: "  drover activate production 20261122T101500Z-3f9c2ab",
		Args:    exactArgs(2, "an environment and a release"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Common = g.common(cmd, args[0])
			o.Release = args[1]
			_, err := cli.Activate(cmd.Context(), o)
			return err
		},
	}
	cmd.Flags().StringVar(&o.Strategy, "strategy", "", "all-at-once (default; also two-phase), rolling, serial or canary")
	leaseFlag(cmd, &o.Lease)
	noWaitFlag(cmd, &o.NoWait)
	skipFlag(cmd, o)
	return cmd
}

func newResumeCmd(g *globals) *cobra.Command {
	o := &cli.DeployOptions{}
	cmd := &cobra.Command{
		Use:   "resume ENV",
		Short: "Continue the last failed or interrupted deploy of ENV from the step that failed",
		Long: `resume finds the newest release that some host of ENV holds and not every
host runs, and finishes it: hosts and steps already done are skipped.`,
		Example: "  drover resume production",
		Args:    exactArgs(1, "an environment"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Common = g.common(cmd, args[0])
			_, err := cli.Resume(cmd.Context(), o)
			return err
		},
	}
	cmd.Flags().StringVar(&o.Strategy, "strategy", "", "all-at-once (default; also two-phase), rolling, serial or canary")
	cmd.Flags().IntVar(&o.Parallel, "parallel", 0, "hosts prepared at once (default all)")
	leaseFlag(cmd, &o.Lease)
	noWaitFlag(cmd, &o.NoWait)
	skipFlag(cmd, o)
	return cmd
}

func newRollbackCmd(g *globals) *cobra.Command {
	o := &cli.RollbackOptions{}
	cmd := &cobra.Command{
		Use:   "rollback ENV",
		Short: "Switch every host of ENV back to the previous good release (or --to RELEASE) and restart",
		Example: `  drover rollback production
  drover rollback production --to 20261122T101500Z-3f9c2ab`,
		Args: exactArgs(1, "an environment"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Common = g.common(cmd, args[0])
			_, err := cli.Rollback(cmd.Context(), o)
			return err
		},
	}
	cmd.Flags().StringVar(&o.To, "to", "", "the release to go back to (default: the previous good one, the same on every host)")
	leaseFlag(cmd, &o.Lease)
	noWaitFlag(cmd, &o.NoWait)
	return cmd
}

// leaseFlag adds --lock-lease, the same on every command that takes the
// deploy lock.
func leaseFlag(cmd *cobra.Command, d *time.Duration) {
	cmd.Flags().DurationVar(d, "lock-lease", lock.DefaultLease,
		fmt.Sprintf("the deploy lock lapses this long after the deployer's last heartbeat (%s to %s)", lock.MinLease, lock.MaxLease))
}

// noWaitFlag adds --no-wait: with a control server (DROVER_SERVER or
// server: in drover.yml), fail at once when its deploy lock is busy.
func noWaitFlag(cmd *cobra.Command, b *bool) {
	cmd.Flags().BoolVar(b, "no-wait", false, "with a drover server (DROVER_SERVER or server: in drover.yml): fail at once when another deploy holds or waits for the environment's lock, instead of waiting in its queue")
}

// serverQueue is what deploy and prepare say of a drover server's queue.
const serverQueue = `With a drover server (DROVER_SERVER and DROVER_TOKEN, or server: in drover.yml)
the deploy first takes ENV's deploy lock from the server, waiting in its queue
behind other deploys and server rollouts (it shows who holds the lock and its
place; Ctrl-C leaves the queue; --no-wait fails instead). Its progress is
recorded there (drover rollouts APP ENV). DROVER_SERVER=off deploys without the
server.`
