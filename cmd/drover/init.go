package main

import (
	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/cli"
)

func newInitCmd(g *globals) *cobra.Command {
	o := &cli.InitOptions{}
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Write a commented drover.yml for the repository you stand in",
		Example: `  cd ~/src/shop && drover init
  drover init --force   # overwrite an existing drover.yml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.IO = cli.StdIO(g.output)
			return cli.Init(cmd.Context(), o)
		},
	}
	cmd.Flags().BoolVar(&o.Force, "force", false, "overwrite an existing drover.yml")
	cmd.Flags().StringVar(&o.Dir, "dir", ".", "the repository to write drover.yml into")
	return cmd
}
