package main

import (
	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/cli"
)

// newDecideCmd is `drover promote ENV` or `drover abort ENV`.
func newDecideCmd(g *globals, decision string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "promote ENV",
		Short: "Let the canary paused in ENV go on: the other hosts follow",
		Long: `promote decides the canary a 'drover deploy' with strategy canary left paused
after its first batch: the decision is written on the canary hosts, where the
paused deployer reads it within a second. Run it from any machine that reaches
the hosts (another terminal, a CI job). With no canary paused it exits 2.`,
		Example: `  drover promote production
  drover releases production   # shows the paused canary, if any`,
		Args: exactArgs(1, "an environment"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := g.common(cmd, args[0])
			return cli.Decide(cmd.Context(), &c, decision)
		},
	}
	if decision == "abort" {
		cmd.Use = "abort ENV"
		cmd.Short = "Roll back the canary paused in ENV: its hosts go back to their previous release, re-enabled; the deploy fails"
		cmd.Long = `abort decides the canary a 'drover deploy' with strategy canary left paused
after its first batch: the paused deployer rolls the canary hosts back through
the same drain and enable steps, and exits non-zero with "canary aborted by
WHO". Run it from any machine that reaches the hosts. With no canary paused it
exits 2.`
		cmd.Example = `  drover abort production`
	}
	return cmd
}
