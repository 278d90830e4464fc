package main

import (
	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/cli"
)

// newDecideCmd is `drover promote ENV` or `drover abort ENV`.
func newDecideCmd(g *globals, decision string) *cobra.Command {
	ro := &cli.RolloutOptions{}
	cmd := &cobra.Command{
		Use:   "promote ENV | --rollout ID",
		Short: "Let the canary paused in ENV go on: the other hosts follow",
		Long: `promote decides the canary a 'drover deploy' with strategy canary left paused
after its first batch: the decision is written on the canary hosts, where the
paused deployer reads it within a second. Run it from any machine that reaches
the hosts (another terminal, a CI job). With no canary paused it exits 2.

With --rollout ID it promotes a canary rollout the control server runs
(drover rollouts APP lists them); decided before the canary pauses, the
decision waits for it.`,
		Example: `  drover promote production
  drover releases production   # shows the paused canary, if any
  drover promote --rollout 12 --server https://drover.internal:8700`,
		Args: func(cmd *cobra.Command, args []string) error {
			if ro.ID != 0 {
				return cobra.NoArgs(cmd, args)
			}
			return exactArgs(1, "an environment (or --rollout ID)")(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if ro.ID != 0 {
				ro.IO = cli.StdIO(g.output)
				return cli.DecideRollout(cmd.Context(), ro, decision)
			}
			c := g.common(cmd, args[0])
			return cli.Decide(cmd.Context(), &c, decision)
		},
	}
	cmd.Flags().Int64Var(&ro.ID, "rollout", 0, "decide this server-run canary rollout instead (with --server and --token)")
	clientFlags(cmd, &ro.ClientOptions)
	if decision == "abort" {
		cmd.Use = "abort ENV | --rollout ID"
		cmd.Short = "Roll back the canary paused in ENV: its hosts go back to their previous release, re-enabled; the deploy fails"
		cmd.Long = `abort decides the canary a 'drover deploy' with strategy canary left paused
after its first batch: the paused deployer rolls the canary hosts back through
the same drain and enable steps, and exits non-zero with "canary aborted by
WHO". Run it from any machine that reaches the hosts. With no canary paused it
exits 2.

With --rollout ID it aborts a canary rollout the control server runs: the
server rolls its canary nodes back and the rollout ends aborted.`
		cmd.Example = `  drover abort production
  drover abort --rollout 12`
	}
	return cmd
}
