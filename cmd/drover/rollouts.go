package main

import (
	"context"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/cli"
)

func newRolloutsCmd(g *globals) *cobra.Command {
	o := &cli.RolloutsOptions{}
	cmd := &cobra.Command{
		Use:   "rollouts APP [ENV]",
		Short: "List APP's rollouts on the control server: running, queued with position, finished, per-node progress",
		Example: `  drover rollouts shop production
  drover rollouts shop -o json`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.IO = cli.StdIO(g.output)
			o.App = args[0]
			if len(args) == 2 {
				o.Env = args[1]
			}
			return cli.Rollouts(cmd.Context(), o)
		},
	}
	clientFlags(cmd, &o.ClientOptions)
	cmd.Flags().IntVar(&o.Limit, "limit", 20, "show at most this many rollouts (1-200)")
	return cmd
}

func newRolloutCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "rollout", Short: "Show or cancel one rollout on the control server"}
	cmd.AddCommand(
		rolloutIDCmd(g, "show ID", "Show a rollout with every node's progress", "  drover rollout show 12\n  drover rollout show 12 -o json", cli.RolloutShow),
		rolloutIDCmd(g, "cancel ID", "Take a queued rollout out of its environment's queue (a running one cannot be cancelled)", "  drover rollout cancel 13", cli.RolloutCancel),
	)
	return cmd
}

// rolloutIDCmd is a command on one rollout given by its ID.
func rolloutIDCmd(g *globals, use, short, example string, run func(context.Context, *cli.RolloutOptions) error) *cobra.Command {
	o := &cli.RolloutOptions{}
	cmd := &cobra.Command{
		Use:     use,
		Short:   short,
		Example: example,
		Args:    exactArgs(1, "a rollout ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := rolloutID(args[0])
			if err != nil {
				return err
			}
			o.IO, o.ID = cli.StdIO(g.output), id
			return run(cmd.Context(), o)
		},
	}
	clientFlags(cmd, &o.ClientOptions)
	return cmd
}

// rolloutID parses a rollout ID argument.
func rolloutID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, &cli.UsageError{Err: errRolloutID}
	}
	return id, nil
}
